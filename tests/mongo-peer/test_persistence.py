"""Self-test of the peer's persistence (persistence.py): the state file saved at a stop and
loaded at start, and the journal that keeps acknowledged writes through SIGKILL.

Run with the other self-tests:
    python -m unittest discover -s tests/mongo-peer -p 'test_*.py'
"""

import io
import os
import signal
import tempfile
import unittest

import bson
import gridfs
import pymongo

from test_peer import Peer


class StateTest(unittest.TestCase):
    def start(self, state):
        peer = Peer(state)
        self.addCleanup(lambda: peer.proc.poll() is not None or peer.kill())
        return peer

    def test_state_survives_sigterm_and_sigint_but_not_sigkill(self):
        with tempfile.TemporaryDirectory() as tmp:
            state = os.path.join(tmp, "peer.state")
            peer = self.start(state)
            with peer.client() as client:
                db = client.keep
                db.create_collection("v", validator={"$jsonSchema": {"required": ["a"]}})
                db.c.create_index([("k", 1)], unique=True, name="k_1")
                db.c.insert_many([{"_id": i, "k": i, "when": bson.datetime.datetime(
                    2024, 5, 1, 12, 0, i, 123000, tzinfo=bson.tz_util.utc),
                    "blob": bson.Binary(bytes([i]) * 10, 0)} for i in range(5)])
                bucket = gridfs.GridFSBucket(db, bucket_name="logs")
                bucket.upload_from_stream("x.log", io.BytesIO(b"hello" * 100000))
            self.assertEqual(peer.stop(signal.SIGTERM), 0)
            self.assertTrue(os.path.exists(state))

            peer = self.start(state)
            with peer.client() as client:
                db = client.keep
                self.assertEqual(db.c.count_documents({}), 5)
                doc = db.c.find_one({"_id": 3})
                self.assertEqual(doc["blob"], b"\x03" * 10)
                self.assertEqual(doc["when"], bson.datetime.datetime(
                    2024, 5, 1, 12, 0, 3, 123000, tzinfo=bson.tz_util.utc))
                self.assertTrue(db.c.index_information()["k_1"]["unique"])
                with self.assertRaises(pymongo.errors.DuplicateKeyError):
                    db.c.insert_one({"k": 1})
                [info] = db.list_collections(filter={"name": "v"})
                self.assertEqual(info["options"]["validator"], {"$jsonSchema": {"required": ["a"]}})
                bucket = gridfs.GridFSBucket(db, bucket_name="logs")
                self.assertEqual(bucket.open_download_stream_by_name("x.log").read(),
                                 b"hello" * 100000)
                db.c.insert_one({"_id": 100, "k": 100})
            self.assertEqual(peer.stop(signal.SIGINT), 0)

            peer = self.start(state)
            with peer.client() as client:
                self.assertEqual(client.keep.c.count_documents({}), 6)
                client.keep.c.insert_one({"_id": 200, "k": 200})
            peer.kill()  # SIGKILL: nothing saved

            peer = self.start(state)
            with peer.client() as client:
                self.assertEqual(client.keep.c.count_documents({}), 6)
            self.assertEqual(peer.stop(), 0)

    def test_exit_with_stdin_saves(self):
        with tempfile.TemporaryDirectory() as tmp:
            state = os.path.join(tmp, "peer.state")
            peer = Peer(state, exit_with_stdin=True)
            self.addCleanup(lambda: peer.proc.poll() is not None or peer.kill())
            with peer.client() as client:
                client.s.c.insert_one({"_id": "kept"})
            peer.proc.stdin.close()
            self.assertEqual(peer.proc.wait(timeout=20), 0)
            peer.proc.stdout.close()
            peer = self.start(state)
            with peer.client() as client:
                self.assertEqual(client.s.c.find_one(), {"_id": "kept"})
            self.assertEqual(peer.stop(), 0)


class JournalTest(unittest.TestCase):
    def test_writes_survive_sigkill_and_a_torn_record_is_dropped(self):
        with tempfile.TemporaryDirectory() as tmp:
            journal = os.path.join(tmp, "peer.journal")
            peer = Peer(journal=journal)
            with peer.client() as client:
                c = client.keep.c
                c.create_index([("k", 1)], unique=True, name="k_1")
                c.insert_many([{"_id": i, "k": i} for i in range(5)])
                c.update_one({"_id": 1}, {"$set": {"v": "x"}})
                c.delete_one({"_id": 4})
            peer.kill()
            with open(journal, "ab") as f:
                f.write(b"\x40\x00\x00\x00\x02upd")  # a record cut short by the kill
            peer = Peer(port=peer.port, journal=journal)
            self.addCleanup(peer.kill)
            with peer.client() as client:
                c = client.keep.c
                self.assertEqual(sorted(d["_id"] for d in c.find()), [0, 1, 2, 3])
                self.assertEqual(c.find_one({"_id": 1})["v"], "x")
                self.assertIn("k_1", c.index_information())
                c.insert_one({"_id": 9, "k": 9})  # appends after the dropped tail
            peer.kill()
            peer2 = Peer(journal=journal)
            self.addCleanup(peer2.kill)
            with peer2.client() as client:
                self.assertEqual(client.keep.c.count_documents({}), 5)


if __name__ == "__main__":
    unittest.main()
