"""The peer's data on disk: a state file saved at exit and loaded at start, and the journal of
write commands replayed at start, so that a peer killed with SIGKILL keeps what it acknowledged.
A mixin of `Peer`, which provides `client`, `options`, `collection_names` and `run_command`.
"""

import os
import struct

import bson
from bson.errors import BSONError

from statements import create_index, index_doc
from wire import OPTS

STATE_FORMAT = {"peer": "buildstore mongo-peer state", "version": 1}


class Persistence:
    def save_state(self, path):
        """Writes every collection as a header document followed by its documents, as BSON."""
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as out:
            out.write(bson.encode(STATE_FORMAT))
            for db_name in self.client.list_database_names():
                for name in self.collection_names(db_name):
                    coll = self.client[db_name][name]
                    docs = list(coll.find())
                    indexes = [index_doc(n, info) for n, info in coll.index_information().items()
                               if n != "_id_"]
                    header = {"db": db_name, "collection": name, "indexes": indexes,
                              "options": self.options.get((db_name, name), {}),
                              "count": len(docs)}
                    out.write(bson.encode(header, codec_options=OPTS))
                    for doc in docs:
                        out.write(bson.encode(doc, codec_options=OPTS))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)  # a crash mid-write leaves the previous state whole

    def open_journal(self, path, conn):
        """Replays the journal's whole records on `conn`, drops a torn tail, then appends to it."""
        good = 0
        if os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read()
            while good + 4 <= len(data):
                (size,) = struct.unpack_from("<i", data, good)
                if size < 5 or good + size > len(data):
                    break
                try:
                    body = bson.decode(data[good:good + size], codec_options=OPTS)
                except BSONError:
                    break
                self.run_command(body, conn)
                good += size
        self.journal = open(path, "ab")
        self.journal.truncate(good)

    def load_state(self, path):
        with open(path, "rb") as f:
            items = bson.decode_file_iter(f, codec_options=OPTS)
            if next(items, None) != STATE_FORMAT:
                raise SystemExit(f"{path} is not a mongo-peer state file")
            for header in items:
                db, name = header["db"], header["collection"]
                self.client[db].create_collection(name)
                docs = [next(items) for _ in range(header["count"])]
                coll = self.client[db][name]
                if docs:
                    coll.insert_many(docs)
                # After the documents: checking a unique index once is cheaper than per insert.
                for spec in header["indexes"]:
                    create_index(coll, spec)
                if header["options"]:
                    self.options[(db, name)] = header["options"]
