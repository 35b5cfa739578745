"""Messages about the builds of other masters, which a shared mq delivers too: nothing is sent
for them, and once known as another master's, their steps' log messages cost no read.
"""

from buildbot.test import fakedb
from twisted.internet import defer
from twisted.trial import unittest

from buildstore_buildbot.state import RecentIds
from buildstore_buildbot.test.test_reporter import MASTER
from buildstore_buildbot.test.test_reporter import ReporterTestCase


class TestStepsOfOtherMasters(ReporterTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        yield self.master.db.insert_test_data(
            [
                fakedb.Master(id=MASTER + 1, name="other"),
                self.build_row(21, 1, masterid=MASTER + 1),
            ]
        )
        self.stepid, _ = yield self.add_step(buildid=21)
        self.logid = yield self.add_log(self.stepid, "stdio", announce=False)
        self.take()

    def count_reads(self):
        """The paths the reporter reads from the data API from now on."""
        real_get = self.master.data.get
        reads = []

        def get(path, **kw):
            reads.append(path)
            return real_get(path, **kw)

        self.patch(self.master.data, "get", get)
        return reads

    @defer.inlineCallbacks
    def append_messages(self, count):
        """Appends to the step's log ``count`` times; returns the append messages."""
        messages = []
        for n in range(count):
            yield self.master.db.logs.appendLog(self.logid, f"oline {n}\n")
            logdict = yield self.master.data.get(("logs", self.logid))
            messages.append((("logs", str(self.logid), "append"), logdict))
        return messages

    @defer.inlineCallbacks
    def test_only_the_first_log_message_of_a_step_of_another_master_costs_reads(self):
        messages = yield self.append_messages(4)
        reads = self.count_reads()
        yield self.deliver(*messages[0])
        # The step, to find its build; the build, to find it is another master's.
        self.assertEqual(reads, [("steps", self.stepid), ("builds", 21)])
        del reads[:]
        for message in messages[1:]:
            yield self.deliver(*message)
        self.assertEqual(reads, [])
        self.assertEqual((self.take(), self.reporter._steps), ([], {}))

    @defer.inlineCallbacks
    def test_log_messages_of_a_step_of_another_master_seen_starting_cost_no_read(self):
        step = yield self.master.data.get(("steps", self.stepid))
        messages = yield self.append_messages(3)
        reads = self.count_reads()
        yield self.deliver(("steps", str(self.stepid), "started"), step)
        self.assertEqual(reads, [("builds", 21)])
        del reads[:]
        for message in messages:
            yield self.deliver(*message)
        self.assertEqual(reads, [])
        self.assertEqual((self.take(), self.reporter._steps), ([], {}))

    @defer.inlineCallbacks
    def test_messages_in_quick_succession_cost_one_read_of_the_step(self):
        # All delivered before the first job has found the step to be another master's.
        messages = yield self.append_messages(3)
        reads = self.count_reads()
        for key, message in messages:
            self.master.mq.callConsumer(key, message)
        yield self.reporter.wait_idle()
        self.assertEqual(reads, [("steps", self.stepid), ("builds", 21)])
        self.assertEqual(self.take(), [])

    @defer.inlineCallbacks
    def test_a_step_of_a_build_announced_by_another_master_keeps_no_state(self):
        # A step that is added but never started (worker preparation failed) sends no message
        # that would free its state: none may be made.
        build = yield self.master.data.get(("builds", 21))
        step = yield self.master.data.get(("steps", self.stepid))
        yield self.deliver(("builds", "21", "new"), build)
        yield self.deliver(("steps", str(self.stepid), "new"), step)
        self.assertEqual((self.take(), self.reporter._steps), ([], {}))


class TestRecentIds(unittest.TestCase):
    def test_the_oldest_ids_are_forgotten_past_the_bound(self):
        ids = RecentIds(2)
        for id_ in (1, 2, 2, 3):
            ids.add(id_)
        self.assertEqual([i in ids for i in (1, 2, 3)], [False, True, True])
        self.assertEqual(len(ids), 2)
