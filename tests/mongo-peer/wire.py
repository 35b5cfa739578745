"""The MongoDB wire protocol as far as the test peer needs it: framing, and the OP_MSG and
OP_QUERY messages a driver sends (OP_QUERY only for a legacy handshake)."""

import itertools
import struct
from datetime import timezone

import bson
from bson.codec_options import CodecOptions

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
CHECKSUM_PRESENT, MORE_TO_COME = 1 << 0, 1 << 1
MAX_BSON_BYTES = 16 * 1024 * 1024
# Room a message takes around the documents it holds: a command's own fields, a reply's.
ENVELOPE_BYTES = 16 * 1024
# A command document may pass the size of a stored document by that much.
MAX_COMMAND_BYTES = MAX_BSON_BYTES + ENVELOPE_BYTES
# dict keeps field order; datetimes come back timezone-aware UTC; the default (unspecified) UUID
# representation keeps every binary subtype as it came, so binary data round-trips.
OPTS = CodecOptions(document_class=dict, tz_aware=True, tzinfo=timezone.utc)

_request_ids = itertools.count(1)


class CommandTooLarge(ValueError):
    """A body section past MAX_COMMAND_BYTES, which MongoDB refuses with BSONObjectTooLarge."""


def parse_op_msg(payload, flags):
    """The command document of an OP_MSG: the kind-0 body plus each kind-1 sequence as a list."""
    end = len(payload) - (4 if flags & CHECKSUM_PRESENT else 0)  # the CRC-32C is not checked
    pos, body, sequences = 4, None, {}
    while pos < end:
        kind = payload[pos]
        pos += 1
        (size,) = struct.unpack_from("<i", payload, pos)
        if kind == 0:
            if size > MAX_COMMAND_BYTES:
                raise CommandTooLarge(
                    f"BSONObj size: {size} (0x{size:X}) is invalid. "
                    f"Size must be between 0 and {MAX_COMMAND_BYTES}")
            body = bson.decode(payload[pos:pos + size], codec_options=OPTS)
        elif kind == 1:
            name_end = payload.index(b"\x00", pos + 4)
            name = payload[pos + 4:name_end].decode()
            sequences[name] = bson.decode_all(payload[name_end + 1:pos + size], OPTS)
        else:
            raise ValueError(f"unknown section kind {kind}")
        pos += size
    if body is None:
        raise ValueError("no body section")
    body.update(sequences)
    return body


def parse_op_query(payload):
    """The collection name and query of an OP_QUERY (the selector of fields is not needed)."""
    name_end = payload.index(b"\x00", 4)
    collection = payload[4:name_end].decode()
    pos = name_end + 1 + 8  # skip numberToSkip and numberToReturn
    (size,) = struct.unpack_from("<i", payload, pos)
    query = bson.decode(payload[pos:pos + size], codec_options=OPTS)
    if "$query" in query:  # the wrapped form, used with $readPreference
        query = query["$query"]
    return collection, query


def frame(response_to, opcode, payload):
    header = struct.pack("<iiii", 16 + len(payload), next(_request_ids), response_to, opcode)
    return header + payload


def recv_exact(sock, n):
    """Exactly n bytes, or None when the client closed the connection."""
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)
