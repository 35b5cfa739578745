"""Self-test of peer.py with pymongo as the client: a real driver over a real socket.

Run from a virtualenv with requirements.txt installed:
    python -m unittest discover -s tests/mongo-peer -p 'test_*.py'
"""

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import unittest

import bson
import gridfs
import pymongo
from bson.int64 import Int64
from pymongo.errors import BulkWriteError, OperationFailure, WriteError

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer.py")


class Peer:
    """peer.py as a subprocess on a free port."""

    def __init__(self, state=None, port=0, exit_with_stdin=False, journal=None):
        args = [sys.executable, PEER, "--port", str(port)]
        if state:
            args += ["--state", state]
        if journal:
            args += ["--journal", journal]
        if exit_with_stdin:
            args.append("--exit-with-stdin")
        stdin = subprocess.PIPE if exit_with_stdin else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        prefix = "listening on 127.0.0.1:"
        if not line.startswith(prefix):
            self.proc.kill()
            raise RuntimeError(f"unexpected first line from the peer: {line!r}")
        self.port = int(line[len(prefix):])

    def client(self):
        return pymongo.MongoClient("127.0.0.1", self.port, serverSelectionTimeoutMS=5000,
                                   connectTimeoutMS=5000, socketTimeoutMS=20000, tz_aware=True)

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        self.proc.stdout.close()
        return code

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=20)
        self.proc.stdout.close()
        if self.proc.stdin:
            self.proc.stdin.close()


def raw_message(sock, opcode, payload, request_id=7):
    sock.sendall(struct.pack("<iiii", 16 + len(payload), request_id, 0, opcode) + payload)


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        data += chunk
    return data


def raw_reply(sock):
    length, _, response_to, opcode = struct.unpack("<iiii", recv_exact(sock, 16))
    return response_to, opcode, recv_exact(sock, length - 16)


def op_msg(body, sequences=(), flags=0, checksum=False):
    payload = struct.pack("<I", flags | (1 if checksum else 0)) + b"\x00" + bson.encode(body)
    for name, docs in sequences:
        data = name.encode() + b"\x00" + b"".join(bson.encode(d) for d in docs)
        payload += b"\x01" + struct.pack("<i", 4 + len(data)) + data
    if checksum:
        payload += b"\x00\x00\x00\x00"  # the peer reads it and does not check it
    return payload


def op_msg_reply(sock):
    _, opcode, payload = raw_reply(sock)
    assert opcode == 2013 and payload[4] == 0
    return bson.decode(payload[5:])


class PeerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.peer = Peer()
        cls.client = cls.peer.client()

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        if cls.peer.stop() != 0:
            raise AssertionError("the peer did not exit with status 0 on SIGTERM")

    def setUp(self):
        self.db = self.client[f"t_{self._testMethodName}"]

    def tearDown(self):
        self.client.drop_database(self.db.name)

    def test_handshake(self):
        hello = self.client.admin.command("hello")
        self.assertTrue(hello["isWritablePrimary"])
        self.assertTrue(hello["helloOk"])
        self.assertEqual(hello["maxWireVersion"], 17)
        for absent in ("logicalSessionTimeoutMinutes", "topologyVersion", "setName",
                       "compression"):
            self.assertNotIn(absent, hello)
        self.assertEqual(self.client.admin.command("ping")["ok"], 1.0)
        self.assertEqual(self.client.admin.command("buildInfo")["versionArray"], [6, 0, 0, 0])
        self.assertEqual(self.client.server_info()["version"], "6.0.0")
        self.assertEqual(self.client.admin.command("serverStatus")["ok"], 1.0)
        self.assertEqual(self.client.admin.command("getParameter", 1,
                                                   featureCompatibilityVersion=1)
                         ["featureCompatibilityVersion"], {"version": "6.0"})
        with self.assertRaises(OperationFailure) as err:
            self.client.admin.command("frobnicate")
        self.assertEqual(err.exception.code, 59)
        self.assertIn("no such command: 'frobnicate'", str(err.exception))

    def test_legacy_op_query_handshake(self):
        with socket.create_connection(("127.0.0.1", self.peer.port), timeout=10) as sock:
            query = bson.encode({"$query": {"isMaster": 1, "helloOk": True}})
            raw_message(sock, 2004, struct.pack("<i", 0) + b"admin.$cmd\x00"
                        + struct.pack("<ii", 0, -1) + query, request_id=41)
            response_to, opcode, payload = raw_reply(sock)
            self.assertEqual((response_to, opcode), (41, 1))
            flags, cursor_id, start, returned = struct.unpack_from("<iqii", payload)
            self.assertEqual((flags, cursor_id, start, returned), (0, 0, 0, 1))
            reply = bson.decode(payload[20:])
            self.assertTrue(reply["ismaster"])
            self.assertIsInstance(reply["connectionId"], int)

    def test_op_msg_sections_checksum_and_more_to_come(self):
        with socket.create_connection(("127.0.0.1", self.peer.port), timeout=10) as sock:
            body = {"insert": "raw", "$db": self.db.name}
            docs = [{"_id": 1, "b": bson.Binary(b"\x00\x01\xff", 0)}, {"_id": 2}]
            raw_message(sock, 2013, op_msg(body, [("documents", docs)], checksum=True))
            self.assertEqual(op_msg_reply(sock)["n"], 2)
            # moreToCome: executed, never answered; the next reply is the ping's.
            raw_message(sock, 2013, op_msg(body, [("documents", [{"_id": 3}])], flags=2))
            raw_message(sock, 2013, op_msg({"ping": 1, "$db": "admin"}), request_id=99)
            response_to, _, payload = raw_reply(sock)
            self.assertEqual(response_to, 99)
        self.assertEqual(self.db.raw.count_documents({}), 3)
        self.assertEqual(self.db.raw.find_one({"_id": 1})["b"], b"\x00\x01\xff")

    def test_a_command_past_the_size_limit_is_refused(self):
        with socket.create_connection(("127.0.0.1", self.peer.port), timeout=10) as sock:
            keys = ["k" * 500 + str(i) for i in range(33_000)]  # about 17 MiB as BSON
            raw_message(sock, 2013, op_msg({"find": "big", "filter": {"_id": {"$in": keys}},
                                            "$db": self.db.name}))
            reply = op_msg_reply(sock)
            self.assertEqual((reply["ok"], reply["code"]), (0.0, 10334))
            self.assertIn("BSONObj size", reply["errmsg"])
            # Document sequences are no part of the command document: only the message limits
            # them.
            docs = [{"_id": i, "k": keys[i]} for i in range(33_000)]
            raw_message(sock, 2013, op_msg({"insert": "big", "$db": self.db.name},
                                           [("documents", docs)]))
            self.assertEqual(op_msg_reply(sock)["n"], 33_000)

    def test_broken_client_does_not_disturb_others(self):
        for junk in (b"\x05\x00", struct.pack("<iiii", 5, 1, 0, 2013), b"\x20\x00\x00\x00"):
            with socket.create_connection(("127.0.0.1", self.peer.port), timeout=10) as sock:
                sock.sendall(junk)
        with socket.create_connection(("127.0.0.1", self.peer.port), timeout=10) as sock:
            raw_message(sock, 2013, struct.pack("<I", 0) + b"\x00" + b"\x05\x00\x00")
            self.assertEqual(op_msg_reply(sock)["ok"], 0.0)

        def insert(i):
            with self.peer.client() as client:
                client[self.db.name].many.insert_many([{"t": i, "k": k} for k in range(50)])
        threads = [threading.Thread(target=insert, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(self.db.many.count_documents({}), 200)

    def test_insert(self):
        self.db.c.insert_many([{"_id": 1}, {"_id": 2}])
        with self.assertRaises(BulkWriteError) as err:
            self.db.c.insert_many([{"_id": 3}, {"_id": 2}, {"_id": 4}])
        details = err.exception.details
        self.assertEqual(details["nInserted"], 1)
        [error] = details["writeErrors"]
        self.assertEqual((error["index"], error["code"]), (1, 11000))
        self.assertEqual(error["errmsg"], f"E11000 duplicate key error collection: "
                                          f"{self.db.name}.c index: _id_ dup key: {{ _id: 2 }}")
        with self.assertRaises(BulkWriteError) as err:
            self.db.c.insert_many([{"_id": 1}, {"_id": 5}, {"_id": 2}, {"_id": 6}], ordered=False)
        self.assertEqual(err.exception.details["nInserted"], 2)
        self.assertEqual([e["index"] for e in err.exception.details["writeErrors"]], [0, 2])
        self.assertEqual(sorted(d["_id"] for d in self.db.c.find()), [1, 2, 3, 5, 6])

    def test_update(self):
        c = self.db.c
        for status in ("online", "offline"):
            c.update_one({"_id": "w1"}, {"$set": {"status": status},
                                         "$setOnInsert": {"name": "worker", "steps": []}},
                         upsert=True)
        self.assertEqual(c.find_one({"_id": "w1"}),
                         {"_id": "w1", "status": "offline", "name": "worker", "steps": []})
        r = c.update_one({"_id": "new"}, {"$set": {"a": 1}}, upsert=True)
        self.assertEqual((r.matched_count, r.modified_count, r.upserted_id), (0, 0, "new"))
        for step, pos in (("a", 0), ("c", 1), ("b", 1), ("b", 1)):
            c.update_one({"_id": "w1", "steps": {"$ne": step}},
                         {"$push": {"steps": {"$each": [step], "$position": pos}}})
        self.assertEqual(c.find_one({"_id": "w1"})["steps"], ["a", "b", "c"])
        c.insert_one({"_id": "h", "builds": [{"build": 1, "r": 0}, {"build": 2, "r": 0}]})
        r = c.update_one({"_id": "h", "builds.build": 2}, {"$set": {"builds.$": {"build": 2,
                                                                                "r": 5}}})
        self.assertEqual(r.modified_count, 1)
        self.assertEqual(c.find_one({"_id": "h"})["builds"][1], {"build": 2, "r": 5})
        c.insert_one({"_id": "log", "text": "ab"})
        c.update_one({"_id": "log"}, [{"$set": {"text": {"$concat": ["$text",
                                                                      {"$literal": "$c"}]}}}])
        self.assertEqual(c.find_one({"_id": "log"})["text"], "ab$c")
        r = c.update_many({}, {"$set": {"seen": True}})
        self.assertEqual((r.matched_count, r.modified_count), (4, 4))
        c.replace_one({"_id": "new"}, {"b": 2})
        self.assertEqual(c.find_one({"_id": "new"}), {"_id": "new", "b": 2})
        # What mongomock does not implement comes back as a write error with code 238.
        with self.assertRaises(WriteError) as err:
            c.update_one({"_id": "h"}, {"$set": {"builds.$[b].r": 1}},
                         array_filters=[{"b.build": 1}])
        self.assertEqual(err.exception.code, 238)
        self.assertIn("Array filters are not implemented", str(err.exception))

    def test_update_write_errors_ordered_and_unordered(self):
        self.db.c.insert_many([{"_id": 1}, {"_id": 2}])
        updates = [{"q": {"_id": 1}, "u": {"$set": {"a": 1}}},
                   {"q": {"_id": 2}, "u": {"$bogus": {"a": 1}}},
                   {"q": {"_id": 3}, "u": {"$set": {"a": 3}}, "upsert": True}]
        reply = self.db.command("update", "c", updates=updates)
        self.assertEqual((reply["n"], reply["nModified"], reply["ok"]), (1, 1, 1.0))
        self.assertEqual(reply["writeErrors"][0]["index"], 1)
        reply = self.db.command("update", "c", updates=updates, ordered=False)
        self.assertEqual(reply["upserted"], [{"index": 2, "_id": 3}])
        self.assertEqual((reply["n"], reply["nModified"]), (2, 0))

    def test_delete(self):
        self.db.c.insert_many([{"k": i % 3} for i in range(9)])
        self.assertEqual(self.db.c.delete_one({"k": 0}).deleted_count, 1)
        self.assertEqual(self.db.c.delete_many({"k": 1}).deleted_count, 3)
        self.assertEqual(self.db.c.count_documents({}), 5)

    def test_find_get_more_and_kill_cursors(self):
        self.db.c.insert_many([{"_id": i, "x": i % 5, "pad": "p"} for i in range(30)])
        self.client.admin.command("buildstorePeerReset")
        docs = list(self.db.c.find({"x": {"$lt": 4}}, {"pad": 0}, sort=[("x", -1), ("_id", 1)],
                                   limit=20, batch_size=3))
        self.assertEqual(len(docs), 20)
        self.assertEqual(docs[0], {"_id": 3, "x": 3})
        self.assertEqual([d["x"] for d in docs], sorted((d["x"] for d in docs), reverse=True))
        stats = self.client.admin.command("buildstorePeerStats")
        self.assertEqual(stats["commands"]["find"], 1)
        self.assertEqual(stats["commands"]["getMore"], 6)
        self.assertEqual(self.db.c.find_one({"_id": 7}, {"x": 1}), {"_id": 7, "x": 2})

        first = self.db.command("find", "c", filter={}, batchSize=2)["cursor"]
        self.assertEqual(len(first["firstBatch"]), 2)
        self.assertNotEqual(first["id"], 0)
        more = self.db.command("getMore", Int64(first["id"]), collection="c",
                               batchSize=5)["cursor"]
        self.assertEqual(([d["_id"] for d in more["nextBatch"]], more["id"]),
                         ([2, 3, 4, 5, 6], first["id"]))
        killed = self.db.command("killCursors", "c", cursors=[Int64(first["id"]), Int64(12)])
        self.assertEqual((killed["cursorsKilled"], killed["cursorsNotFound"]),
                         ([first["id"]], [12]))
        with self.assertRaises(OperationFailure) as err:
            self.db.command("getMore", Int64(first["id"]), collection="c")
        self.assertEqual(err.exception.code, 43)
        single = self.db.command("find", "c", filter={}, limit=-4)["cursor"]
        self.assertEqual((len(single["firstBatch"]), single["id"]), (4, 0))
        cursor = self.db.c.find().batch_size(2)
        next(cursor)
        cursor.close()  # pymongo sends killCursors

    def test_aggregate_count_distinct(self):
        self.db.c.insert_many([{"k": i % 3, "v": i} for i in range(10)])
        out = list(self.db.c.aggregate([{"$match": {"v": {"$gte": 1}}},
                                        {"$group": {"_id": "$k", "total": {"$sum": "$v"}}},
                                        {"$sort": {"_id": 1}}], batchSize=1))
        self.assertEqual(out, [{"_id": 0, "total": 18}, {"_id": 1, "total": 12},
                               {"_id": 2, "total": 15}])
        self.assertEqual(self.db.c.count_documents({"k": 1}), 3)
        self.assertEqual(self.db.c.count_documents({}, skip=2, limit=5), 5)
        self.assertEqual(self.db.c.estimated_document_count(), 10)
        self.assertEqual(self.db.command("count", "c", query={"k": 2})["n"], 3)
        self.assertEqual(sorted(self.db.c.distinct("k", {"v": {"$lt": 2}})), [0, 1])

    def test_indexes(self):
        name = self.db.c.create_index([("b", 1), ("a", -1)], unique=True, name="b_a")
        self.assertEqual(name, "b_a")
        self.db.c.create_index([("b", 1), ("a", -1)], unique=True, name="b_a")  # same: fine
        indexes = {ix["name"]: ix for ix in self.db.c.list_indexes()}
        self.assertEqual(list(indexes["b_a"]["key"].items()), [("b", 1), ("a", -1)])
        self.assertTrue(indexes["b_a"]["unique"])
        self.assertIn("_id_", indexes)
        self.db.c.insert_one({"a": 1, "b": 1})
        with self.assertRaises(pymongo.errors.DuplicateKeyError):
            self.db.c.insert_one({"a": 1, "b": 1})
        with self.assertRaises(OperationFailure) as err:
            self.db.command("listIndexes", "missing")
        self.assertEqual(err.exception.code, 26)
        self.assertEqual(list(self.db.missing.list_indexes()), [])  # pymongo hides code 26

    def test_collections(self):
        validator = {"$jsonSchema": {"bsonType": "object", "required": ["name"]}}
        self.db.create_collection("v", validator=validator, validationLevel="moderate")
        self.db.plain.insert_one({})
        self.assertEqual(sorted(self.db.list_collection_names()), ["plain", "v"])
        with self.assertRaises(OperationFailure) as err:
            self.db.command("create", "v")
        self.assertEqual(err.exception.code, 48)
        [info] = self.db.list_collections(filter={"name": "v"})
        self.assertEqual(info["options"], {"validator": validator, "validationLevel": "moderate"})
        stricter = {"$jsonSchema": {"bsonType": "object", "required": ["name", "age"]}}
        self.db.command("collMod", "v", validator=stricter, validationAction="error")
        [info] = self.db.list_collections(filter={"name": {"$in": ["v", "zzz"]}})
        self.assertEqual(info["options"]["validator"], stricter)
        self.assertEqual(info["options"]["validationAction"], "error")
        with self.assertRaises(OperationFailure) as err:
            self.db.command("collMod", "missing", validator={})
        self.assertEqual(err.exception.code, 26)
        with self.assertRaises(OperationFailure) as err:
            self.db.command("create", "capped", capped=True, size=4096)
        self.assertEqual(err.exception.code, 238)
        self.db.v.insert_one({"no": "name"})  # not enforced: mongomock has no validation
        self.db.drop_collection("v")
        self.assertEqual(self.db.list_collection_names(), ["plain"])
        self.db.drop_collection("v")  # pymongo ignores NamespaceNotFound
        with self.assertRaises(OperationFailure) as err:
            self.db.command("drop", "v")
        self.assertEqual(err.exception.code, 26)
        self.assertIn(self.db.name, self.client.list_database_names())
        self.client.drop_database(self.db.name)
        self.assertNotIn(self.db.name, self.client.list_database_names())
        self.assertEqual(self.db.list_collection_names(), [])

    def test_find_one_and_update(self):
        c = self.db.c
        c.insert_many([{"_id": 1, "n": 1, "q": "a"}, {"_id": 2, "n": 5, "q": "a"}])
        after = c.find_one_and_update({"q": "a"}, {"$inc": {"n": 1}}, sort=[("n", -1)],
                                      return_document=pymongo.ReturnDocument.AFTER)
        self.assertEqual(after, {"_id": 2, "n": 6, "q": "a"})
        before = c.find_one_and_update({"_id": 1}, {"$set": {"n": 0}}, projection={"n": 1})
        self.assertEqual(before, {"_id": 1, "n": 1})
        reply = self.db.command("findAndModify", "c", query={"_id": 9},
                                update={"$set": {"n": 9}}, upsert=True, new=True)
        self.assertEqual(reply["value"], {"_id": 9, "n": 9})
        self.assertEqual(reply["lastErrorObject"],
                         {"n": 1, "updatedExisting": False, "upserted": 9})
        reply = self.db.command("findAndModify", "c", query={"_id": 9}, remove=True)
        self.assertEqual((reply["value"], reply["lastErrorObject"]), ({"_id": 9, "n": 9},
                                                                      {"n": 1}))
        self.assertIsNone(c.find_one_and_update({"_id": 42}, {"$set": {"n": 1}}))
        self.assertEqual(c.find_one_and_replace({"_id": 1}, {"r": 1},
                                                return_document=pymongo.ReturnDocument.AFTER),
                         {"_id": 1, "r": 1})

    def test_gridfs(self):
        bucket = gridfs.GridFSBucket(self.db, bucket_name="logs")
        data = os.urandom(700 * 1024) + bytes(range(256))
        file_id = bucket.upload_from_stream("step.log", io.BytesIO(data),
                                            metadata={"offset": 0})
        self.assertGreater(self.db["logs.chunks"].count_documents({"files_id": file_id}), 2)
        out = io.BytesIO()
        bucket.download_to_stream(file_id, out)
        self.assertEqual(out.getvalue(), data)
        self.assertEqual(bucket.open_download_stream_by_name("step.log").read(), data)
        self.assertEqual(sorted(self.db.list_collection_names()), ["logs.chunks", "logs.files"])

    def test_mongomock_gaps_are_error_replies(self):
        c = self.db.c
        c.insert_one({"_id": 1, "s": "héllo", "p": {}})
        with self.assertRaises(OperationFailure) as err:
            c.find_one({"$jsonSchema": {"required": ["s"]}})
        self.assertEqual(err.exception.code, 238)
        for stage in ({"$set": {"n": {"$strLenBytes": "$s"}}},
                      {"$unset": "s"}):
            with self.assertRaises(WriteError) as err:
                c.update_one({"_id": 1}, [stage])
            self.assertEqual(err.exception.code, 238, stage)
        # mongomock calls $setField unknown rather than not implemented: code 2 BadValue.
        with self.assertRaises(WriteError) as err:
            c.update_one({"_id": 1}, [{"$set": {"p": {"$setField": {
                "field": "k", "input": "$p", "value": 1}}}}])
        self.assertIn("$setField", str(err.exception))
        with self.assertRaises(OperationFailure) as err:
            c.find_one({}, collation={"locale": "en"})
        self.assertEqual(err.exception.code, 238)
        # mongomock would update the first element, not the matched one: refused.
        c.insert_one({"_id": 2, "a": [{"k": 1, "v": 0}, {"k": 2, "v": 0}]})
        with self.assertRaises(OperationFailure) as err:
            c.find_one_and_update({"_id": 2, "a.k": 2}, {"$set": {"a.$.v": 1}})
        self.assertEqual(err.exception.code, 238)
        self.assertEqual(c.find_one({"_id": 2})["a"][0]["v"], 0)
        self.assertEqual(c.find_one({"_id": 1})["s"], "héllo")  # nothing was changed

    def test_id_lookups_answer_like_a_scan(self):
        c = self.db.ids
        c.insert_many([{"_id": i, "v": i % 3} for i in range(50)] + [{"_id": "s", "v": 1}])
        for flt in [{"_id": 7}, {"_id": 7, "v": 1}, {"_id": 7, "v": 2}, {"_id": 99},
                    {"_id": {"$in": [3, 4, "s", 99, 4]}}, {"_id": {"$in": []}},
                    {"_id": {"$in": [1, 2]}, "v": 2}, {"_id": 7.0}, {"_id": "7"}]:
            scanned = [d for d in c.find({}) if self.matches(c, flt, d)]
            self.assertEqual(sorted(map(repr, c.find(flt))), sorted(map(repr, scanned)), flt)
        c.update_one({"_id": 8}, {"$set": {"w": 1}})
        self.assertEqual(c.find_one({"_id": 8})["w"], 1)
        c.update_one({"_id": 1000}, {"$set": {"w": 2}}, upsert=True)
        self.assertEqual(c.find_one({"_id": 1000})["w"], 2)

    @staticmethod
    def matches(c, flt, doc):
        # mongomock's matcher without the peer's _id lookup: a filter on a unique marker field.
        return c.count_documents({"$and": [{"_id": doc["_id"]}, {"$or": [flt]}]}) == 1

    def test_list_databases(self):
        self.db.c.insert_one({})
        names = self.client.list_database_names()
        self.assertIn(self.db.name, names)
        [spec] = self.client.list_databases(filter={"name": self.db.name})
        self.assertFalse(spec["empty"])

    def test_fail_command_fail_point(self):
        admin = self.client.admin
        admin.command({"configureFailPoint": "failCommand", "mode": {"times": 2},
                       "data": {"failCommands": ["insert"], "errorCode": 50,
                                "errorLabels": ["RetryableWriteError"]}})
        try:
            for _ in range(2):
                with self.assertRaises(OperationFailure) as failed:
                    self.db.command({"insert": "c", "documents": [{"_id": 1}]})
                self.assertEqual(failed.exception.code, 50)
                self.assertIn("RetryableWriteError", failed.exception.details["errorLabels"])
            self.assertEqual(self.db.c.count_documents({}), 0, "a failed insert wrote nothing")
            self.db.command({"find": "c"})  # other commands run meanwhile
            self.db.command({"insert": "c", "documents": [{"_id": 1}]})
            self.assertEqual(self.db.c.count_documents({}), 1, "the third one runs")
            admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn",
                           "data": {"failCommands": ["update"], "errorCode": 2}})
            with self.assertRaises(OperationFailure):
                self.db.c.update_one({"_id": 1}, {"$set": {"x": 1}})
            with self.assertRaises(OperationFailure) as bad:
                admin.command({"configureFailPoint": "failCommand", "mode": {"every": 2}})
            self.assertIn("mode", str(bad.exception))
            # skip: the first N run, every later one fails.
            admin.command({"configureFailPoint": "failCommand", "mode": {"skip": 2},
                           "data": {"failCommands": ["update"], "errorCode": 2}})
            self.db.c.update_one({"_id": 1}, {"$set": {"y": 1}})
            self.db.c.update_one({"_id": 1}, {"$set": {"y": 2}})
            for _ in range(2):
                with self.assertRaises(OperationFailure):
                    self.db.c.update_one({"_id": 1}, {"$set": {"y": 3}})
            self.assertEqual(self.db.c.find_one({"_id": 1})["y"], 2)
        finally:
            admin.command({"configureFailPoint": "failCommand", "mode": "off"})
        self.db.c.update_one({"_id": 1}, {"$set": {"x": 1}})
        self.assertEqual(self.db.c.find_one({"_id": 1})["x"], 1)

    def test_a_write_concern_error_comes_with_the_write_done(self):
        admin = self.client.admin
        concern = {"code": 64, "errmsg": "waiting for replication timed out"}
        admin.command({"configureFailPoint": "failCommand", "mode": {"times": 1},
                       "data": {"failCommands": ["insert"], "writeConcernError": concern}})
        try:
            reply = self.db.command({"insert": "wc", "documents": [{"_id": 1}]})
            self.assertEqual(reply["writeConcernError"], concern)
            self.assertEqual(self.db.wc.count_documents({}), 1, "the insert itself ran")
            reply = self.db.command({"insert": "wc", "documents": [{"_id": 2}]})
            self.assertNotIn("writeConcernError", reply)
        finally:
            admin.command({"configureFailPoint": "failCommand", "mode": "off"})

    def test_stats(self):
        admin = self.client.admin
        admin.command("buildstorePeerReset")
        admin.command("ping")
        admin.command("ping")
        self.db.c.insert_one({"x": 1})
        self.db.command({"insert": "c", "documents": [{"x": 2}], "writeConcern": {"w": 1}})
        stats = admin.command("buildstorePeerStats")
        self.assertEqual(stats["writeConcerns"]["insert"], {"w": 1})
        self.assertIsNone(stats["writeConcerns"]["ping"])
        self.assertEqual(stats["commands"]["ping"], 2)
        self.assertEqual(stats["commands"]["insert"], 2)
        self.assertNotIn("buildstorePeerStats", stats["commands"])
        self.assertNotIn("buildstorePeerReset", stats["commands"])
        # Heartbeats of pymongo's monitor may land in between: count at least ours.
        self.assertGreaterEqual(stats["messages"], 4)
        self.assertEqual(stats["messages"], sum(stats["commands"].values()))
        self.assertGreater(stats["bytesReceived"], 4 * 16)
        admin.command("buildstorePeerReset")
        again = admin.command("buildstorePeerStats")
        self.assertLessEqual(again["messages"], 1)  # at most a heartbeat


if __name__ == "__main__":
    unittest.main()
