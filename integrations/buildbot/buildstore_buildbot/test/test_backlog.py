"""The backlog file: what the queue can't hold, and what a stopping master leaves, is not lost."""

import os
import shutil
import sqlite3
import tempfile

from buildbot.process.results import RETRY
from twisted.internet import defer
from twisted.python import log

from buildstore_buildbot import BuildstoreReporter
from buildstore_buildbot.backlog import Backlog
from buildstore_buildbot.backlog import BacklogError
from buildstore_buildbot.backlog import open_backlog
from buildstore_buildbot.test.test_client import ClientTestCase
from buildstore_buildbot.test.test_client import event
from buildstore_buildbot.test.test_client import until
from buildstore_buildbot.test.test_reporter import HEAD
from buildstore_buildbot.test.test_reporter import RecordingClient
from buildstore_buildbot.test.test_reporter import ReporterTestCase


def rows(path):
    """The event ids in the file, in order, read the way another process would."""
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute("SELECT event_id FROM events ORDER BY seq")]
    finally:
        db.close()


class BacklogTestCase(ClientTestCase):
    def setUp(self):
        super().setUp()
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        self.path = os.path.join(folder, "backlog.sqlite")

    def backlog(self, max_bytes=1 << 30):
        b = Backlog(self.path, max_bytes)
        self.addCleanup(b.close)
        return b

    def ids(self, n, m):
        return [f"e{i}" for i in range(n, m)]

    def spilling(self, queue_size, count):
        """A client whose queue holds ``queue_size`` events, sent ``count``: the rest in the file."""
        c = self.client(queue_size=queue_size)
        backlog = self.backlog()
        c.set_backlog(backlog)
        for n in range(count):
            c.send(event(n))
        return c, backlog

    def received(self, count):
        """Whether the daemon's latest connection has ``count`` events."""
        return lambda: bool(self.daemon.connections) and len(self.daemon.ids()) == count


class TestOverflow(BacklogTestCase):
    @defer.inlineCallbacks
    def test_events_past_the_queue_wait_in_the_backlog_and_all_arrive_in_order(self):
        c = self.client(queue_size=5)
        c.set_backlog(self.backlog())
        for n in range(50):  # the daemon not connected yet: an outage
            self.assertTrue(c.send(event(n)))
        self.assertEqual(len(c.queue), 5)
        self.assertEqual(c.backlog.waiting, 45)
        self.assertEqual(c.dropped, 0)
        self.assertEqual(rows(self.path), self.ids(5, 50))
        self.assertTrue(self.logs.matching("keeping further events in the backlog"))

        c.start()
        yield c.wait_drained(timeout=10)
        self.assertEqual(self.daemon.ids(), self.ids(0, 50))
        self.assertEqual(c.acknowledged, 50)
        self.assertEqual(rows(self.path), [])  # acknowledged rows leave the file
        self.assertEqual(c.backlog.bytes, 0)
        self.assertTrue(self.logs.matching("has caught up; 45 events went through it"))

    @defer.inlineCallbacks
    def test_events_sent_while_the_backlog_drains_queue_behind_it(self):
        c, _ = self.spilling(10, 12)

        def answer(e, n):
            self.daemon.hold = n >= 1  # acks e0, then takes lines without answering
            return {"ack": e["event_id"]}

        self.daemon.answer = answer
        c.start()
        yield until(self.received(10))
        self.assertEqual(len(c.queue), 9)  # room for one, but e10 and e11 wait in the file
        c.send(event(12))
        self.assertEqual(rows(self.path), ["e10", "e11", "e12"])

        yield self.daemon.stop()  # the held lines were never answered: they are sent again
        self.daemon.hold = False
        self.daemon.answer = lambda e, n: {"ack": e["event_id"]}
        self.daemon.listen(self.port)
        yield c.wait_drained(timeout=10)
        self.assertEqual(self.daemon.ids(), self.ids(1, 13))
        c.send(event(13))  # the backlog is empty again: straight into the queue
        self.assertEqual(rows(self.path), [])
        yield c.wait_drained(timeout=10)
        self.assertEqual(self.daemon.ids()[-1], "e13")

    def test_rows_leave_the_file_only_once_acknowledged(self):
        # A master killed while rows taken from the backlog were in flight sends them again at
        # its next start; only the events that never left memory are lost.
        c, _ = self.spilling(3, 10)
        self.assertEqual(rows(self.path), self.ids(3, 10))

        def answer(e, n):
            self.daemon.hold = n >= 3  # acks e0 to e2, then takes lines without answering
            return {"ack": e["event_id"]}

        self.daemon.answer = answer
        c.start()
        d = until(self.received(6))

        def check(_):
            self.assertEqual([p.event_id for p in c.queue], self.ids(3, 6))  # from the file
            self.assertEqual(rows(self.path), self.ids(3, 10))

        return d.addCallback(check)

    def test_past_backlog_bytes_events_are_dropped_with_a_log_line(self):
        line = len(b'{"type":"builder_state","master_id":"m1","event_id":"e0","builder":"b",')
        c = self.client(queue_size=2)
        c.set_backlog(self.backlog(max_bytes=10 * line))
        sent = [c.send(event(n)) for n in range(20)]
        self.assertEqual(c.dropped, sent.count(False))
        self.assertTrue(0 < c.dropped < 18)
        self.assertLessEqual(c.backlog.bytes, 10 * line)
        (message,) = self.logs.matching("dropping event")
        self.assertIn("backlog full", message)
        self.assertIn("the backlog_bytes bound", message)

    @defer.inlineCallbacks
    def test_an_event_larger_than_the_whole_queue_goes_out_at_once_on_an_idle_connection(self):
        c = self.client(queue_bytes=1000)
        c.set_backlog(self.backlog())
        c.start()
        c.send(event(0))
        yield c.wait_drained(timeout=10)
        c.send(dict(event(1), state="x" * 4000))
        c.send(event(2))
        yield c.wait_drained(timeout=10)
        self.assertEqual(self.daemon.ids(), ["e0", "e1", "e2"])

    @defer.inlineCallbacks
    def test_an_event_larger_than_the_whole_queue_goes_out_alone(self):
        big = dict(event(1), state="x" * 4000)
        c = self.client(queue_bytes=1000)
        c.set_backlog(self.backlog())
        for e in (event(0), big, event(2)):
            self.assertTrue(c.send(e))
        c.start()
        yield c.wait_drained(timeout=10)
        self.assertEqual(self.daemon.ids(), ["e0", "e1", "e2"])


class TestFailures(BacklogTestCase):
    @defer.inlineCallbacks
    def test_an_event_the_file_cannot_take_is_dropped_and_the_order_kept(self):
        c, backlog = self.spilling(2, 5)

        def no_space(event_id, line):
            raise BacklogError(f"cannot write backlog {self.path}: database or disk is full")

        full = self.patch(backlog, "append", no_space)
        self.assertFalse(c.send(event(5)))  # not queued in memory ahead of e2 to e4
        self.assertFalse(c.send(event(6)))
        full.restore()
        self.assertTrue(c.send(event(7)))  # the disk has room again
        c.start()
        yield c.wait_drained(timeout=10)
        self.assertEqual(self.daemon.ids(), ["e0", "e1", "e2", "e3", "e4", "e7"])
        self.assertEqual(c.dropped, 2)
        (message,) = self.logs.matching("dropping event")
        self.assertIn("database or disk is full", message)

    @defer.inlineCallbacks
    def test_a_file_that_cannot_be_read_is_given_up_and_the_rest_goes_on(self):
        c, backlog = self.spilling(2, 5)

        def unreadable(count, room):
            raise BacklogError(f"cannot read backlog {self.path}: disk I/O error")

        self.patch(backlog, "take", unreadable)
        c.start()
        yield c.wait_drained(timeout=10)
        self.assertEqual(self.daemon.ids(), ["e0", "e1"])
        self.assertTrue(self.logs.matching("3 events waiting in it are sent then"))
        self.assertIsNone(c.backlog)
        c.send(event(5))  # straight to the daemon now
        yield c.wait_drained(timeout=10)
        self.assertEqual(self.daemon.ids()[-1], "e5")
        # A client replacing this one (a reconfig) does not take the failed file up again.
        c2 = self.client()
        c2.set_backlog(backlog)
        self.assertIsNone(c2.backlog)
        self.assertEqual(rows(self.path), self.ids(2, 5))  # still there, for the next start

    @defer.inlineCallbacks
    def test_a_new_client_taking_over_leaves_unacknowledged_rows_in_the_file(self):
        # What a reconfig to a new address does: the old client, stopped, must not rewrite
        # the file it no longer owns.
        backlog = self.backlog()
        old = self.client(queue_size=2)
        old.set_backlog(backlog)
        for n in range(6):
            old.send(event(n))

        def answer(e, n):
            self.daemon.hold = n >= 2  # acks e0 and e1; e2 and e3, from the file, wait
            return {"ack": e["event_id"]}

        self.daemon.answer = answer
        old.start()
        yield until(self.received(4))
        new = self.client(queue_size=2)
        new.take_queue(old)
        new.set_backlog(backlog)
        yield old.stop(0)
        self.assertEqual([p.event_id for p in new.queue], ["e2", "e3"])
        self.assertEqual(rows(self.path), self.ids(2, 6))

    @defer.inlineCallbacks
    def test_events_sent_after_the_stop_are_dropped_with_a_log_line(self):
        c = self.client()
        c.set_backlog(self.backlog())
        yield c.stop(0)
        self.assertFalse(c.send(event(0)))
        (message,) = self.logs.matching("dropping event")
        self.assertIn("the plugin has stopped", message)


class TestOnSafe(BacklogTestCase):
    """What the sender learns: an event is safe once answered, or once in the file."""

    @defer.inlineCallbacks
    def test_an_event_is_safe_once_acknowledged_not_once_written(self):
        safe = []
        c = self.client()
        c.set_backlog(self.backlog())
        self.daemon.hold = True
        c.start()
        c.send(event(0), on_safe=lambda: safe.append("e0"))
        yield until(self.received(1))
        self.assertEqual(safe, [])  # on the wire, not acknowledged
        yield self.daemon.stop()
        self.daemon.hold = False
        self.daemon.listen(self.port)
        yield c.wait_drained(timeout=10)
        self.assertEqual(safe, ["e0"])

    @defer.inlineCallbacks
    def test_an_event_in_the_file_is_safe_once_the_events_before_it_are(self):
        safe = []
        c, _ = self.spilling(1, 1)
        c.send(event(1), on_safe=lambda: safe.append("e1"))  # in the file, behind e0
        c.send(event(2), on_safe=lambda: safe.append("e2"))
        self.assertEqual(safe, [])  # e0 is only in memory: a crash now would lose it
        c.start()
        yield c.wait_drained(timeout=10)
        self.assertEqual(safe, ["e1", "e2"])  # once e0 was acknowledged

    @defer.inlineCallbacks
    def test_an_event_is_safe_once_the_stop_wrote_the_events_before_it_to_the_file(self):
        safe = []
        c, _ = self.spilling(1, 1)
        c.send(event(1), on_safe=lambda: safe.append("e1"))
        yield c.stop(0)  # e0 goes into the file, in front of e1
        self.assertEqual(safe, ["e1"])
        self.assertEqual(rows(self.path), self.ids(0, 2))

    @defer.inlineCallbacks
    def test_thousands_of_events_in_the_file_behind_one_are_all_safe_once_it_is(self):
        # Hours of an outage: every event after the queue filled waits on the queue's last one.
        safe = []
        c, _ = self.spilling(1, 1)
        for i in range(1, 3001):
            c.send(event(i), on_safe=lambda i=i: safe.append(i))
        self.assertEqual(safe, [])
        c.start()
        yield c.wait_drained(timeout=30)
        self.assertEqual(safe, list(range(1, 3001)))
        self.assertEqual(self.logs.matching("while noting"), [])

    def test_an_event_in_the_file_behind_an_empty_queue_is_safe_at_once(self):
        safe = []
        c = self.client(queue_bytes=1000)
        c.set_backlog(self.backlog())
        c.send(dict(event(0), state="x" * 4000), on_safe=lambda: safe.append("e0"))
        self.assertEqual(safe, ["e0"])

    @defer.inlineCallbacks
    def test_a_dropped_or_lost_event_is_never_safe(self):
        safe = []
        c = self.client(queue_size=1)
        c.send(event(0), on_safe=lambda: safe.append("e0"))
        c.send(event(1), on_safe=lambda: safe.append("e1"))  # queue full, no file: dropped
        yield c.stop(0)  # e0 lost
        self.assertEqual(safe, [])


class TestStop(BacklogTestCase):
    @defer.inlineCallbacks
    def test_a_stopping_client_keeps_what_is_unacknowledged_for_the_next_start(self):
        backlog = Backlog(self.path, 1 << 30)
        c = self.client(queue_size=4)
        c.set_backlog(backlog)
        self.daemon.hold = True
        c.start()
        for n in range(10):
            c.send(event(n))
        yield until(self.received(4))
        yield c.stop(timeout=0.1)
        backlog.close()
        self.assertEqual(rows(self.path), self.ids(0, 10))
        self.assertTrue(self.logs.matching("10 events not acknowledged"))
        self.assertTrue(self.logs.matching("sent at the next start"))

        # The next start: the kept events go before anything the master sends meanwhile.
        self.daemon.hold = False
        c2 = self.client()
        c2.set_backlog(self.backlog())
        c2.send(event(10))
        c2.start()
        yield c2.wait_drained(timeout=10)
        self.assertEqual(self.daemon.ids(), self.ids(0, 11))
        self.assertEqual(rows(self.path), [])

    @defer.inlineCallbacks
    def test_a_second_stop_keeps_the_order_of_both(self):
        # Stopped twice during one outage: what the second run queued goes after the first's.
        for first, last in ((0, 6), (6, 9)):
            backlog = Backlog(self.path, 1 << 30)
            c = self.client(queue_size=4)
            c.set_backlog(backlog)  # never connected: the daemon is down
            for n in range(first, last):
                c.send(event(n))
            yield c.stop(timeout=0.1)
            backlog.close()
        self.assertEqual(rows(self.path), self.ids(0, 9))
        self.assertEqual(len(self.logs.matching("kept in the backlog")), 2)
        self.assertTrue(self.logs.matching("stopping with 9 events not acknowledged"))
        self.assertFalse(self.logs.matching("lost"))

    @defer.inlineCallbacks
    def test_without_a_backlog_what_is_unacknowledged_at_stop_is_lost(self):
        c = self.client()
        c.send(event(0))
        yield c.stop(timeout=0.1)
        self.assertTrue(self.logs.matching("1 events not acknowledged"))
        self.assertTrue(self.logs.matching("they are lost"))


class TestFile(BacklogTestCase):
    def test_an_unreadable_file_is_moved_aside_and_a_new_one_started(self):
        with open(self.path, "wb") as f:
            f.write(b"not a database, " * 100)
        said = []
        backlog = open_backlog(self.path, 1 << 30, said.append)
        self.addCleanup(backlog.close)
        (message,) = said
        self.assertIn(f"cannot open backlog {self.path}", message)
        self.assertIn("moved it to", message)
        aside = message.split("moved it to ")[1].split(" ")[0]
        with open(aside, "rb") as f:
            self.assertTrue(f.read().startswith(b"not a database"))
        backlog.append("e0", b"{}\n")
        self.assertEqual(rows(self.path), ["e0"])

    def test_a_file_another_service_uses_is_left_alone(self):
        first = self.backlog()
        first.append("e0", b"{}\n")
        said = []
        self.assertIsNone(open_backlog(self.path, 1 << 30, said.append))
        (message,) = said
        self.assertIn("another service or master uses it", message)
        self.assertEqual(rows(self.path), ["e0"])  # not moved aside
        self.assertEqual(os.listdir(os.path.dirname(self.path)).count("backlog.sqlite"), 1)

    def test_a_file_locked_for_now_is_left_alone(self):
        self.backlog().close()
        other = sqlite3.connect(self.path)
        self.addCleanup(other.close)
        other.execute("PRAGMA locking_mode=EXCLUSIVE")
        other.execute("BEGIN EXCLUSIVE")
        said = []
        self.assertIsNone(open_backlog(self.path, 1 << 30, said.append))
        (message,) = said
        self.assertIn("locked", message)
        self.assertFalse([f for f in os.listdir(os.path.dirname(self.path)) if "unreadable" in f])

    def test_an_empty_file_grown_by_an_outage_is_compacted(self):
        self.backlog().close()
        db = sqlite3.connect(self.path)
        db.executemany(
            "INSERT INTO events (seq, event_id, line) VALUES (?, ?, ?)",
            [(n, f"e{n}", b"x" * 2000) for n in range(1, 15001)],
        )
        db.commit()
        db.execute("DELETE FROM events")
        db.commit()
        db.close()
        self.assertGreater(os.path.getsize(self.path), 20 << 20)
        self.backlog().close()
        self.assertLess(os.path.getsize(self.path), 1 << 20)

    def test_a_backlog_in_a_missing_directory_is_none_and_says_why(self):
        said = []
        missing = os.path.join(self.path, "nowhere", "backlog.sqlite")
        self.assertIsNone(open_backlog(missing, 1 << 30, said.append))
        (message,) = said
        self.assertIn(missing, message)
        self.assertIn("will be dropped", message)


class TestReporter(ReporterTestCase):
    def test_the_reporter_keeps_its_backlog_in_the_masters_directory(self):
        backlog = self.reporter.client.backlog
        expected = os.path.join(self.master.basedir, "buildstore-backlog.sqlite")
        self.assertEqual(backlog.path, expected)
        self.assertTrue(os.path.exists(expected))

    @defer.inlineCallbacks
    def test_a_service_with_a_name_of_its_own_has_a_file_of_its_own(self):
        second = BuildstoreReporter("tcp://127.0.0.1:9990", master_id="m1", name="second")
        second.client_class = RecordingClient
        yield second.setServiceParent(self.master)
        self.addCleanup(second.disownServiceParent)
        expected = os.path.join(self.master.basedir, "buildstore-backlog-second.sqlite")
        self.assertEqual(second.client.backlog.path, expected)
        self.assertIsNotNone(self.reporter.client.backlog)

    @defer.inlineCallbacks
    def test_a_new_client_takes_over_the_backlog(self):
        backlog = self.reporter.client.backlog
        sibling = BuildstoreReporter("unix:/run/b.sock", master_id="m1")
        yield self.reporter.reconfigServiceWithSibling(sibling)
        self.assertIs(self.reporter.client.backlog, backlog)

    @defer.inlineCallbacks
    def test_the_backlog_is_closed_when_the_master_stops(self):
        backlog = self.reporter.client.backlog
        yield self.reporter.disownServiceParent()  # stops it
        with self.assertRaisesRegex(BacklogError, "closed database"):
            backlog.append("e0", b"{}\n")


class TestRunningBuilds(ReporterTestCase):
    """The backlog file lists the builds reported as started and not as finished."""

    def setUp(self):
        self.messages = []
        log.addObserver(self._observe)
        self.addCleanup(log.removeObserver, self._observe)
        return super().setUp()

    def _observe(self, event):
        self.messages.append(" ".join(str(m) for m in event.get("message", ())))

    def logs_matching(self, text):
        return [m for m in self.messages if text in m]

    @defer.inlineCallbacks
    def test_a_build_cut_short_by_a_crash_is_finished_at_the_next_start(self):
        stepid, number, logid = yield self.start_build_with_step()
        yield self.master.db.logs.appendLog(logid, "ofirst\n")
        yield self.log_message(logid)
        backlog = self.reporter.client.backlog
        self.assertEqual(backlog.running_builds(), [20])

        # The master dies. Starting again, Buildbot finishes the build and its step as RETRY
        # before the plugin listens; the step's last output came just before the end.
        yield self.master.db.logs.appendLog(logid, "osecond\n")
        yield self.master.db.builds.setBuildProperty(20, "got_revision", HEAD, "Git")
        yield self.master.db.steps.finishStep(stepid=stepid, results=RETRY, hidden=False)
        yield self.master.db.builds.finishBuild(buildid=20, results=RETRY)
        self.take()
        self.reporter._reset_state()  # what the dead process held is gone
        self.reporter._recover_running_builds()
        yield self.reporter.wait_idle()

        sent = self.take()
        self.assertEqual(
            [e["type"] for e in sent],
            ["build_started"]
            + ["property"] * 2
            + ["step_started", "log", "step_finished", "build_finished"],
        )
        self.assertEqual(sent[0]["event_id"], "build-20-started")  # as before: skipped
        # Properties under ids of this start: the daemon skips build_started, which has them.
        props = {e["name"]: e for e in sent[1:3]}
        self.assertEqual(props["got_revision"]["value"], HEAD)
        self.assertTrue(props["scheduler"]["event_id"].endswith(self.reporter._boot_ids.boot))
        # The whole log, from its start, under an id of its own byte range: the daemon keeps
        # only the part it lacks ("second"), where a chunk it has (0 to 6) would be skipped.
        log_event = sent[4]
        self.assertEqual((log_event["offset"], log_event["text"]), (0, "first\nsecond\n"))
        self.assertTrue(log_event["event_id"].endswith("-@0-13"))
        self.assertEqual((sent[5]["step"], sent[5]["result"]), (number, RETRY))
        self.assertEqual((sent[6]["build_id"], sent[6]["result"]), (20, RETRY))
        self.assertEqual(backlog.running_builds(), [])
        self.assertEqual((self.reporter._builds, self.reporter._steps), ({}, {}))
        self.assertTrue(self.logs_matching("reporting them again: 20"))

    @defer.inlineCallbacks
    def test_a_build_still_running_after_a_restart_of_the_service_goes_on(self):
        stepid, number, logid = yield self.start_build_with_step()
        yield self.reporter.disownServiceParent()  # stops it, like a reconfig that removes it
        yield self.master.db.logs.appendLog(logid, "owhile stopped\n")
        self.reporter = BuildstoreReporter("tcp://127.0.0.1:9989", master_id="m1")
        self.reporter.client_class = RecordingClient
        yield self.reporter.setServiceParent(self.master)
        yield self.reporter.wait_idle()
        sent = [e for e in self.take() if not e["type"].startswith("builder_")]
        # build_started and step_started with ids the daemon applied (skipped), the property
        self.assertEqual([e["type"] for e in sent], ["build_started", "property", "step_started"])
        # The build goes on as if the service had never stopped.
        yield self.master.db.logs.appendLog(logid, "oafter\n")
        yield self.log_message(logid)
        yield self.finish_step(stepid)
        yield self.master.db.builds.finishBuild(buildid=20, results=0)
        yield self.build_message("finished")
        sent = [e for e in self.take() if not e["type"].startswith("builder_")]
        self.assertEqual([e["type"] for e in sent], ["log", "step_finished", "build_finished"])
        self.assertEqual(sent[0]["text"], "while stopped\nafter\n")
        self.assertEqual(self.reporter.client.backlog.running_builds(), [])

    @defer.inlineCallbacks
    def test_a_value_that_comes_back_after_a_restart_of_the_service_is_sent_again(self):
        @defer.inlineCallbacks
        def set_x(value):
            yield self.master.db.builds.setBuildProperty(20, "x", value, "Step")
            yield self.deliver(("builds", "20", "properties", "update"), {"x": (value, "Step")})

        yield self.master.db.builds.setBuildProperty(20, "x", "A", "Step")
        yield self.start_build_with_step()
        yield set_x("B")
        yield set_x("A")
        [first_b, _] = [e for e in self.take() if e["type"] == "property"]
        yield self.reporter.disownServiceParent()
        self.master.reactor.advance(1)  # a later start has a boot token of its own
        self.reporter = BuildstoreReporter("tcp://127.0.0.1:9989", master_id="m1")
        self.reporter.client_class = RecordingClient
        yield self.reporter.setServiceParent(self.master)
        yield self.reporter.wait_idle()
        self.take()
        # B again: the daemon applied B before A, and must apply this one too, not skip it.
        yield set_x("B")
        [again] = [e for e in self.take() if e["type"] == "property"]
        self.assertEqual(again["value"], "B")
        self.assertNotEqual(again["event_id"], first_b["event_id"])

    @defer.inlineCallbacks
    def test_a_listed_build_gone_from_the_database_is_forgotten(self):
        backlog = self.reporter.client.backlog
        backlog.build_started(999)
        self.take()
        self.reporter._recover_running_builds()
        yield self.reporter.wait_idle()
        self.assertEqual(self.take(), [])
        self.assertEqual(backlog.running_builds(), [])
