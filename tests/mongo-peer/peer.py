#!/usr/bin/env python3
"""A small MongoDB wire-protocol server backed by mongomock, for tests.

No real MongoDB server can be installed where buildstore's tests run, so the Rust `mongodb`
driver is tested over real sockets against this peer instead. It speaks OP_MSG (and OP_QUERY
for the legacy handshake), answers the handful of commands the driver sends, and hands every
query, update and aggregation to mongomock: the peer has no data logic of its own, so whatever
mongomock lacks comes back as an error reply (code 238 NotImplemented) rather than being faked.

    peer.py --port PORT [--host 127.0.0.1] [--state FILE] [--journal FILE] [--exit-with-stdin]

Once it accepts connections it prints `listening on HOST:PORT` and flushes. SIGTERM or SIGINT
(or, with --exit-with-stdin, the end of standard input) stops it with status 0, after saving
everything to FILE when --state is given; FILE is loaded at start when it exists.

With --journal FILE every write command is appended to FILE before it runs, and FILE is replayed
at start: like a real server's journal, so a peer killed with SIGKILL comes back with the writes it
had acknowledged. A torn last record (the kill came mid-write) is dropped.
"""

import argparse
import itertools
import os
import random
import signal
import socketserver
import struct
import sys
import threading
import traceback
from collections import deque
from datetime import datetime, timezone

import bson
import mongomock
import pymongo.errors
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from pymongo import ReturnDocument

import id_lookup  # noqa: F401  (importing it installs the _id lookup)
from failpoint import FailPoint
from persistence import Persistence
from replies import CommandError, classify, error_doc, not_implemented
from statements import (collection_options, create_index, index_doc, insert_document,
                        is_replacement, run_statements, update_statement, uses_positional,
                        with_write_errors)
from wire import (ENVELOPE_BYTES, MAX_BSON_BYTES, MORE_TO_COME, OP_MSG, OP_QUERY, OP_REPLY, OPTS,
                  CommandTooLarge, frame, parse_op_msg, parse_op_query, recv_exact)

SERVER_VERSION = "6.0.0"
# mongomock changes some behaviour with the server version it pretends to be; make it the one
# the handshake advertises.
mongomock.SERVER_VERSION = SERVER_VERSION

MAX_MESSAGE_BYTES = 48_000_000
# MongoDB fills a batch up to the document size limit; leave room for the reply around it.
BATCH_BYTES = MAX_BSON_BYTES - ENVELOPE_BYTES
FIRST_BATCH = 101
# The commands that change data, and so go to the journal.
WRITE_COMMANDS = {"insert", "update", "delete", "findAndModify", "createIndexes", "create",
                  "collMod", "drop", "dropDatabase"}
# Not counted, so that reading the counters does not change them.
STATS_COMMANDS = {"buildstorePeerStats", "buildstorePeerReset"}

_connection_ids = itertools.count(1)


def sort_spec(sort):
    return list(sort.items()) if sort else None


class Connection:
    def __init__(self):
        self.id = next(_connection_ids)


class Peer(Persistence):
    """The shared state: one mongomock client, kept options, open cursors and the counters."""

    def __init__(self):
        self.client = mongomock.MongoClient(tz_aware=True)
        # mongomock is not thread-safe: every command runs under this one lock.
        self.lock = threading.Lock()
        self.options = {}  # (db, collection) -> options given to create/collMod
        self.cursors = {}  # cursor id -> (namespace, deque of documents still to send)
        self.journal = None  # open file, with --journal
        self.fail_point = FailPoint()
        self.reset_stats()

    def reset_stats(self):
        self.commands, self.messages, self.bytes_received = {}, 0, 0
        # The write concern each command last came with (None: without one).
        self.write_concerns = {}

    def count(self, name, length):
        if name in STATS_COMMANDS:
            return
        self.commands[name] = self.commands.get(name, 0) + 1
        self.messages += 1
        self.bytes_received += length

    # ---- messages ----

    def handle_message(self, opcode, request_id, payload, length, conn):
        """Runs one message and returns the reply's bytes, or None when none is due."""
        with self.lock:
            if opcode == OP_MSG:
                return self.handle_op_msg(request_id, payload, length, conn)
            if opcode == OP_QUERY:
                return self.handle_op_query(request_id, payload, length, conn)
            self.count(f"(opcode {opcode})", length)
            raise ConnectionError(f"unsupported opcode {opcode}")

    def handle_op_msg(self, request_id, payload, length, conn):
        (flags,) = struct.unpack_from("<I", payload, 0)
        try:
            body = parse_op_msg(payload, flags)
        except CommandTooLarge as exc:
            self.count("(too large)", length)
            reply = error_doc(10334, str(exc))
        except Exception as exc:  # a malformed message still gets an answer
            self.count("(unparsable)", length)
            reply = error_doc(2, f"cannot parse OP_MSG: {exc}")
        else:
            name = next(iter(body), "(empty)")
            self.count(name, length)
            if name not in STATS_COMMANDS:
                self.write_concerns[name] = body.get("writeConcern")
            reply = self.run_command(body, conn)
        if flags & MORE_TO_COME:
            return None
        return frame(request_id, OP_MSG, struct.pack("<I", 0) + b"\x00" + encode(reply))

    def handle_op_query(self, request_id, payload, length, conn):
        try:
            collection, query = parse_op_query(payload)
        except Exception as exc:
            self.count("(unparsable)", length)
            reply = error_doc(2, f"cannot parse OP_QUERY: {exc}")
        else:
            self.count(next(iter(query), "(empty)"), length)
            db, _, name = collection.partition(".")
            if name != "$cmd":
                reply = error_doc(352, "OP_QUERY is only supported for commands")
            else:
                reply = self.run_command(dict(query, **{"$db": db}), conn)
        return frame(request_id, OP_REPLY, struct.pack("<iqii", 0, 0, 0, 1) + encode(reply))

    def run_command(self, body, conn):
        name = next(iter(body), "")
        handler = COMMANDS.get(name)
        if handler is None:
            return error_doc(59, f"no such command: '{name}'")
        tripped = self.fail_point.trip(name)
        if tripped is not None and tripped[0] == "fail":
            return tripped[1]
        reply = self.run_handler(handler, name, body, conn)
        if tripped is not None and reply.get("ok") == 1.0:
            reply["writeConcernError"] = tripped[1]
        return reply

    def run_handler(self, handler, name, body, conn):
        if self.journal is not None and name in WRITE_COMMANDS:
            # Written (to the OS, which outlives a killed process) before it runs, so no reply
            # can go out for a write the journal lacks.
            self.journal.write(bson.encode(body, codec_options=OPTS))
            self.journal.flush()
        try:
            return handler(self, body, body.get("$db", "admin"), conn)
        except Exception as exc:
            code, message = classify(exc)
            if code == 1:  # not mongomock's refusal but a fault in the peer: show where
                traceback.print_exc()
            return error_doc(code, message)

    # ---- cursors ----

    def cursor_reply(self, ns, docs, batch_size, single_batch=False):
        """Sends the first batch; what is left stays here under a new cursor id for getMore."""
        docs = deque(docs)
        first = take_batch(docs, FIRST_BATCH if batch_size is None else batch_size)
        cursor_id = 0
        if docs and not single_batch:
            cursor_id = random.getrandbits(62) + 1
            self.cursors[cursor_id] = (ns, docs)
        return {"cursor": {"firstBatch": first, "id": Int64(cursor_id), "ns": ns}, "ok": 1.0}

    def cmd_get_more(self, body, db, conn):
        cursor_id = int(body["getMore"])
        if cursor_id not in self.cursors:
            raise CommandError(43, f"cursor id {cursor_id} not found")
        ns, docs = self.cursors[cursor_id]
        batch = take_batch(docs, body.get("batchSize") or None)
        if not docs:
            del self.cursors[cursor_id]
            cursor_id = 0
        return {"cursor": {"nextBatch": batch, "id": Int64(cursor_id), "ns": ns}, "ok": 1.0}

    def cmd_kill_cursors(self, body, db, conn):
        killed, not_found = [], []
        for cursor_id in body.get("cursors", []):
            found = self.cursors.pop(int(cursor_id), None) is not None
            (killed if found else not_found).append(Int64(cursor_id))
        return {"cursorsKilled": killed, "cursorsNotFound": not_found, "cursorsAlive": [],
                "cursorsUnknown": [], "ok": 1.0}

    # ---- handshake and server commands ----

    def cmd_hello(self, body, db, conn):
        # No logicalSessionTimeoutMinutes, topologyVersion or setName: a standalone server
        # without sessions, polled rather than streamed.
        return {"helloOk": True, "ismaster": True, "isWritablePrimary": True,
                "maxBsonObjectSize": MAX_BSON_BYTES, "maxMessageSizeBytes": MAX_MESSAGE_BYTES,
                "maxWriteBatchSize": 100_000, "localTime": datetime.now(timezone.utc),
                "minWireVersion": 0, "maxWireVersion": 17, "connectionId": conn.id,
                "readOnly": False, "ok": 1.0}

    def cmd_ping(self, body, db, conn):
        return {"ok": 1.0}

    def cmd_build_info(self, body, db, conn):
        return {"version": SERVER_VERSION, "versionArray": [6, 0, 0, 0], "bits": 64,
                "maxBsonObjectSize": MAX_BSON_BYTES, "ok": 1.0}

    def cmd_get_parameter(self, body, db, conn):
        known = {"featureCompatibilityVersion": {"version": "6.0"}}
        reply = {k: v for k, v in known.items() if k in body}
        return dict(reply, ok=1.0)

    def cmd_server_status(self, body, db, conn):
        return {"host": "mongo-peer", "version": SERVER_VERSION, "process": "peer.py",
                "pid": Int64(os.getpid()), "localTime": datetime.now(timezone.utc), "ok": 1.0}

    def cmd_list_databases(self, body, db, conn):
        names = sorted(self.client.list_database_names())
        infos = self.filter_docs([{"name": n, "sizeOnDisk": Int64(0), "empty": False}
                                  for n in names], body.get("filter"))
        if body.get("nameOnly"):
            infos = [{"name": d["name"]} for d in infos]
        return {"databases": infos, "totalSize": Int64(0), "totalSizeMb": Int64(0), "ok": 1.0}

    def cmd_peer_stats(self, body, db, conn):
        return {"commands": dict(self.commands), "messages": self.messages,
                "bytesReceived": Int64(self.bytes_received),
                "writeConcerns": dict(self.write_concerns), "ok": 1.0}

    def cmd_configure_fail_point(self, body, db, conn):
        return self.fail_point.configure(body)

    def cmd_peer_reset(self, body, db, conn):
        self.reset_stats()
        return {"ok": 1.0}

    # ---- writes ----

    def cmd_insert(self, body, db, conn):
        name = body["insert"]
        coll, ns = self.client[db][name], f"{db}.{name}"
        done, errors = run_statements(body, "documents", lambda doc: insert_document(coll, ns, doc))
        return with_write_errors({"n": len(done)}, errors)

    def cmd_update(self, body, db, conn):
        not_implemented(body, "update", "let")
        name = body["update"]
        coll, ns = self.client[db][name], f"{db}.{name}"
        done, errors = run_statements(body, "updates", lambda s: update_statement(coll, ns, s))
        reply = {"n": sum(r["n"] for _, r in done),
                 "nModified": sum(r["nModified"] for _, r in done)}
        upserted = [{"index": i, "_id": r["upserted"]} for i, r in done
                    if r.get("upserted") is not None]
        if upserted:
            reply["upserted"] = upserted
        return with_write_errors(reply, errors)

    def cmd_delete(self, body, db, conn):
        not_implemented(body, "delete", "let")
        coll = self.client[db][body["delete"]]

        def delete(stmt):
            run = coll.delete_one if stmt.get("limit", 0) == 1 else coll.delete_many
            return run(stmt.get("q", {}), collation=stmt.get("collation"),
                       hint=stmt.get("hint")).deleted_count
        done, errors = run_statements(body, "deletes", delete)
        return with_write_errors({"n": sum(n for _, n in done)}, errors)

    def cmd_find_and_modify(self, body, db, conn):
        # mongomock's find_one_and_* would silently ignore these.
        not_implemented(body, "findAndModify", "arrayFilters", "collation", "hint", "let")
        coll = self.client[db][body["findAndModify"]]
        query, fields = body.get("query") or {}, body.get("fields")
        sort = sort_spec(body.get("sort"))
        # The lastErrorObject needs to know whether a document matched before the change.
        existed = coll.find_one(query, {"_id": 1}, sort=sort) is not None
        if body.get("remove"):
            value = coll.find_one_and_delete(query, projection=fields, sort=sort)
            return {"lastErrorObject": {"n": int(existed)}, "value": value, "ok": 1.0}
        update, upsert = body.get("update"), bool(body.get("upsert"))
        if uses_positional(update):
            # mongomock re-finds the document by _id alone, so `$` would hit the wrong element.
            raise NotImplementedError("the positional operator $ in findAndModify: mongomock "
                                      "would apply it to the first array element")
        modify = coll.find_one_and_replace if is_replacement(update) else coll.find_one_and_update
        new = ReturnDocument.AFTER if body.get("new") else ReturnDocument.BEFORE
        if existed or not upsert:
            value = modify(query, update, projection=fields, sort=sort, return_document=new)
            return {"lastErrorObject": {"n": int(existed), "updatedExisting": existed},
                    "value": value, "ok": 1.0}
        # An upsert: ask for the new document whole, to learn its _id.
        upserted_id = modify(query, update, sort=sort, upsert=True,
                             return_document=ReturnDocument.AFTER)["_id"]
        value = coll.find_one({"_id": upserted_id}, fields) if body.get("new") else None
        return {"lastErrorObject": {"n": 1, "updatedExisting": False, "upserted": upserted_id},
                "value": value, "ok": 1.0}

    # ---- reads ----

    def cmd_find(self, body, db, conn):
        not_implemented(body, "find", "collation", "let", "min", "max", "returnKey",
                        "showRecordId", "tailable", "awaitData")
        name = body["find"]
        limit, single = int(body.get("limit", 0)), bool(body.get("singleBatch"))
        if limit < 0:  # the legacy way of asking for a single batch
            limit, single = -limit, True
        cursor = self.client[db][name].find(
            body.get("filter") or {}, projection=body.get("projection") or None,
            sort=sort_spec(body.get("sort")), skip=int(body.get("skip", 0)), limit=limit)
        if body.get("hint"):
            cursor.hint(body["hint"])
        return self.cursor_reply(f"{db}.{name}", list(cursor), body.get("batchSize"), single)

    def cmd_aggregate(self, body, db, conn):
        not_implemented(body, "aggregate", "explain", "let", "collation")
        name = body["aggregate"]
        if not isinstance(name, str):
            raise NotImplementedError("database-level aggregate ({aggregate: 1}) is not supported")
        docs = list(self.client[db][name].aggregate(body.get("pipeline", [])))
        batch_size = (body.get("cursor") or {}).get("batchSize")
        return self.cursor_reply(f"{db}.{name}", docs, batch_size)

    def cmd_count(self, body, db, conn):
        not_implemented(body, "count", "collation")
        options = {"skip": int(body.get("skip", 0))}
        if body.get("limit"):  # 0 means none; a negative limit counts like a positive one
            options["limit"] = abs(int(body["limit"]))
        n = self.client[db][body["count"]].count_documents(body.get("query") or {}, **options)
        return {"n": n, "ok": 1.0}

    def cmd_distinct(self, body, db, conn):
        not_implemented(body, "distinct", "collation")
        values = self.client[db][body["distinct"]].distinct(body["key"], body.get("query"))
        return {"values": values, "ok": 1.0}

    # ---- collections and indexes ----

    def collection_names(self, db):
        return self.client[db].list_collection_names()

    def require_collection(self, db, name):
        if name not in self.collection_names(db):
            raise CommandError(26, f"ns does not exist: {db}.{name}")
        return self.client[db][name]

    def cmd_create_indexes(self, body, db, conn):
        name = body["createIndexes"]
        coll = self.client[db][name]
        created = name not in self.collection_names(db)
        before = len(coll.index_information())
        for spec in body.get("indexes", []):
            # mongomock always has the _id index and would list a second one.
            if spec.get("name") != "_id_":
                create_index(coll, spec)
        after = max(len(coll.index_information()), 1)
        return {"numIndexesBefore": max(before, 1), "numIndexesAfter": after,
                "createdCollectionAutomatically": created, "ok": 1.0}

    def cmd_list_indexes(self, body, db, conn):
        name = body["listIndexes"]
        coll = self.require_collection(db, name)
        docs = [index_doc(ix_name, info) for ix_name, info in coll.index_information().items()]
        batch_size = (body.get("cursor") or {}).get("batchSize")
        return self.cursor_reply(f"{db}.{name}", docs, batch_size)

    def cmd_list_collections(self, body, db, conn):
        infos = [{"name": n, "type": "collection", "options": self.options.get((db, n), {}),
                  "info": {"readOnly": False},
                  "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
                 for n in sorted(self.collection_names(db))]
        infos = self.filter_docs(infos, body.get("filter"))
        if body.get("nameOnly"):
            infos = [{"name": d["name"], "type": d["type"]} for d in infos]
        batch_size = (body.get("cursor") or {}).get("batchSize")
        return self.cursor_reply(f"{db}.$cmd.listCollections", infos, batch_size)

    def filter_docs(self, docs, query):
        """Filters plain documents with mongomock's own matching, in a throwaway client."""
        if not query or not docs:
            return docs
        scratch = mongomock.MongoClient(tz_aware=True).scratch.docs
        scratch.insert_many([dict(d, _id=i) for i, d in enumerate(docs)])
        return [docs[d["_id"]] for d in scratch.find(query, {"_id": 1}, sort=[("_id", 1)])]

    def cmd_create(self, body, db, conn):
        name = body["create"]
        options = collection_options(body, "create")
        try:
            self.client[db].create_collection(name)
        except pymongo.errors.CollectionInvalid:
            raise CommandError(48, f"Collection {db}.{name} already exists.") from None
        self.options[(db, name)] = options
        return {"ok": 1.0}

    def cmd_coll_mod(self, body, db, conn):
        name = body["collMod"]
        self.require_collection(db, name)
        options = collection_options(body, "collMod")
        self.options[(db, name)] = dict(self.options.get((db, name), {}), **options)
        return {"ok": 1.0}

    def cmd_drop(self, body, db, conn):
        name = body["drop"]
        coll = self.require_collection(db, name)
        indexes = len(coll.index_information())
        coll.drop()
        self.options.pop((db, name), None)
        return {"nIndexesWas": indexes, "ns": f"{db}.{name}", "ok": 1.0}

    def cmd_drop_database(self, body, db, conn):
        self.client.drop_database(db)
        for key in [k for k in self.options if k[0] == db]:
            del self.options[key]
        return {"ok": 1.0}


def encode(reply):
    """The reply as BSON; one that cannot be encoded becomes an error reply, so that the
    connection survives."""
    try:
        return bson.encode(reply, codec_options=OPTS)
    except Exception as exc:
        return bson.encode(error_doc(1, f"peer error: cannot encode the reply: {exc}"))


def take_batch(docs, size):
    """Takes up to `size` documents (None: no count limit) but at most ~16 MiB of them."""
    batch, total = [], 0
    while docs and (size is None or len(batch) < size):
        raw = bson.encode(docs[0], codec_options=OPTS)
        if batch and total + len(raw) > BATCH_BYTES:
            break
        docs.popleft()
        batch.append(RawBSONDocument(raw))  # encoded once, copied as is into the reply
        total += len(raw)
    return batch


COMMANDS = {
    "hello": Peer.cmd_hello, "isMaster": Peer.cmd_hello, "ismaster": Peer.cmd_hello,
    "ping": Peer.cmd_ping, "buildInfo": Peer.cmd_build_info, "buildinfo": Peer.cmd_build_info,
    "endSessions": Peer.cmd_ping, "getParameter": Peer.cmd_get_parameter,
    "serverStatus": Peer.cmd_server_status, "listDatabases": Peer.cmd_list_databases,
    "insert": Peer.cmd_insert, "update": Peer.cmd_update, "delete": Peer.cmd_delete,
    "findAndModify": Peer.cmd_find_and_modify, "findandmodify": Peer.cmd_find_and_modify,
    "find": Peer.cmd_find, "getMore": Peer.cmd_get_more, "killCursors": Peer.cmd_kill_cursors,
    "aggregate": Peer.cmd_aggregate, "count": Peer.cmd_count, "distinct": Peer.cmd_distinct,
    "createIndexes": Peer.cmd_create_indexes, "listIndexes": Peer.cmd_list_indexes,
    "listCollections": Peer.cmd_list_collections, "create": Peer.cmd_create,
    "collMod": Peer.cmd_coll_mod, "drop": Peer.cmd_drop, "dropDatabase": Peer.cmd_drop_database,
    "buildstorePeerStats": Peer.cmd_peer_stats, "buildstorePeerReset": Peer.cmd_peer_reset,
    "configureFailPoint": Peer.cmd_configure_fail_point,
}


class Handler(socketserver.BaseRequestHandler):
    """One client connection: read a message, answer it, until the client goes away."""

    def handle(self):
        conn, sock = Connection(), self.request
        try:
            while True:
                header = recv_exact(sock, 16)
                if header is None:
                    return
                length, request_id, _, opcode = struct.unpack("<iiii", header)
                if not 16 <= length <= MAX_MESSAGE_BYTES:
                    return  # not a message we can frame: drop this connection only
                payload = recv_exact(sock, length - 16)
                if payload is None:
                    return
                reply = self.server.peer.handle_message(opcode, request_id, payload, length, conn)
                if reply is not None:
                    sock.sendall(reply)
        except (ConnectionError, OSError) as exc:
            # One client's trouble is its own: the others go on.
            print(f"mongo-peer: connection {conn.id} closed: {exc}", file=sys.stderr)
        except Exception:  # a message we could not even frame a reply to
            print(f"mongo-peer: connection {conn.id} dropped:", file=sys.stderr)
            traceback.print_exc()


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # a restarted peer can take its port back at once
    daemon_threads = True
    block_on_close = False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--state", help="load from this file at start, save to it on exit")
    parser.add_argument("--journal", help="append writes to this file; replay it at start")
    parser.add_argument("--exit-with-stdin", action="store_true",
                        help="also stop (and save) when standard input closes")
    args = parser.parse_args()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.exit_with_stdin:
        # The test harness keeps the write end: it closes when the test process ends.
        threading.Thread(target=lambda: (sys.stdin.buffer.read(), stop.set()), daemon=True).start()

    peer = Peer()
    if args.state and os.path.exists(args.state):
        peer.load_state(args.state)
    if args.journal:
        peer.open_journal(args.journal, Connection())
    server = Server((args.host, args.port), Handler)
    server.peer = peer
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"listening on {args.host}:{server.server_address[1]}", flush=True)

    while not stop.wait(0.5):
        pass
    server.shutdown()
    server.server_close()
    peer.lock.acquire()  # wait for a running command; none runs after this
    status = 0
    if args.state:
        try:
            peer.save_state(args.state)
        except Exception:
            traceback.print_exc()
            status = 1
    sys.stderr.flush()
    # Connection threads may be blocked on the lock we hold: leave without waiting for them.
    os._exit(status)

if __name__ == "__main__":
    main()
