"""Messages about a build that come after its ``build_finished`` was sent: they must not bring the
build's state back for good, and what they still carry (a late property, log text a failed read
left behind) is sent.
"""

from twisted.internet import defer

from buildstore_buildbot.test.test_reporter import HEAD
from buildstore_buildbot.test.test_reporter import ReporterTestCase


class TestLateMessages(ReporterTestCase):
    """Messages about a build that come after its ``build_finished`` was sent."""

    @defer.inlineCallbacks
    def finish_build(self, buildid=20, results=0):
        yield self.master.db.builds.finishBuild(buildid=buildid, results=results)
        yield self.build_message("finished", buildid)

    def assertNoStateHeld(self):
        self.assertEqual((self.reporter._builds, self.reporter._steps), ({}, {}))

    @defer.inlineCallbacks
    def test_late_log_messages_bring_no_state_back(self):
        stepid, _, logid = yield self.start_build_with_step()
        yield self.master.db.logs.appendLog(logid, "ocompiled\n")
        yield self.log_message(logid)
        yield self.finish_step(stepid)
        yield self.finish_build()
        self.assertNoStateHeld()
        self.take()
        for _ in range(3):
            yield self.log_message(logid)  # its text was all sent before step_finished
            self.assertNoStateHeld()
        self.assertEqual(self.take(), [])

    @defer.inlineCallbacks
    def test_late_step_messages_bring_no_state_back_and_a_late_end_is_logged(self):
        stepid, _, _ = yield self.start_build_with_step()
        yield self.finish_step(stepid)
        yield self.finish_build()
        self.take()
        logged = self.capture_log()
        yield self.step_message(stepid, "updated")
        yield self.step_message(stepid, "finished")
        self.assertNoStateHeld()
        self.assertEqual(self.take(), [])
        [line] = [line for line in logged if "after the build finished" in line]
        self.assertIn(f"(stepid {stepid}) of build 20 finished after the build finished", line)

    @defer.inlineCallbacks
    def test_a_property_set_after_the_build_ended_is_sent_without_bringing_state_back(self):
        yield self.build_message("new")
        yield self.finish_build()
        self.take()
        props = {"got_revision": (HEAD, "Git")}
        yield self.deliver(("builds", "20", "properties", "update"), props)
        sent = self.take()
        self.assertEqual([e["type"] for e in sent], ["property"])  # no build_started again
        self.assertEqual(sent[0]["value"], HEAD)
        # What was sent is still known, so the same value again is no change.
        yield self.deliver(("builds", "20", "properties", "update"), props)
        self.assertEqual(self.take(), [])
        self.assertNoStateHeld()

    @defer.inlineCallbacks
    def test_log_text_a_failed_read_left_behind_is_sent_after_the_build_ended(self):
        stepid, number, logid = yield self.start_build_with_step()
        self.take()
        self.fail_log_reads(times=3)
        yield self.master.db.logs.appendLog(logid, "olast words\n")
        yield self.master.db.steps.finishStep(stepid=stepid, results=0, hidden=False)
        step = yield self.master.data.get(("steps", stepid))
        self.master.mq.callConsumer(("steps", str(stepid), "finished"), step)
        self.reactor.advance(0.5)
        self.reactor.advance(1.0)
        yield self.reporter.wait_idle()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        yield self.finish_build()
        sent = [e["type"] for e in self.take() if not e["type"].startswith("builder_")]
        self.assertEqual(sent, ["step_finished", "build_finished"])

        logged = self.capture_log()
        yield self.log_message(logid)  # the append message, late; the read works again
        sent = self.take()
        self.assertEqual([e["type"] for e in sent], ["log"])  # no build_started, step_started
        self.assertEqual(
            (sent[0]["step"], sent[0]["offset"], sent[0]["text"]), (number, 0, "last words\n")
        )
        self.assertNoStateHeld()
        [line] = [line for line in logged if "came after build 20 finished" in line]
        self.assertIn(f"11 bytes of the log of step {number} 'compile' (stepid {stepid})", line)
        yield self.log_message(logid)
        self.assertEqual(self.take(), [])

    @defer.inlineCallbacks
    def assert_late_log_of_unstarted_step_not_sent(self, step_seen):
        """The build ends with a step never started (its ``new`` message delivered if
        ``step_seen``); text of that step's log then is not sent, and a log line says so."""
        yield self.build_message("new")
        stepid, number = yield self.add_step(start=False)
        if step_seen:
            yield self.step_message(stepid, "new")
        yield self.finish_build()
        logid = yield self.add_log(stepid, "stdio", announce=step_seen)
        yield self.master.db.logs.appendLog(logid, "otoo late\n")
        self.take()
        logged = self.capture_log()
        yield self.log_message(logid)
        self.assertEqual(self.take(), [])
        self.assertNoStateHeld()
        [line] = [line for line in logged if "never reported as started" in line]
        self.assertIn(f"step {number} 'compile' (stepid {stepid}) came after build 20", line)

    def test_log_text_of_a_step_never_started_is_not_sent_and_that_is_logged(self):
        return self.assert_late_log_of_unstarted_step_not_sent(step_seen=True)

    def test_a_log_of_a_step_never_seen_brings_no_state_back_after_the_build_ended(self):
        return self.assert_late_log_of_unstarted_step_not_sent(step_seen=False)

    @defer.inlineCallbacks
    def test_finished_builds_are_remembered_up_to_a_bound(self):
        self.reporter._finished.kept = 2
        yield self.master.db.insert_test_data(
            [self.build_row(buildid, buildid + 400) for buildid in (21, 22)]
        )
        stepids = []
        for buildid in (20, 21, 22):
            yield self.build_message("new", buildid)
            stepid, _ = yield self.add_step(buildid, start=False)
            yield self.step_message(stepid, "new")
            stepids.append(stepid)
            yield self.finish_build(buildid)
        finished = self.reporter._finished
        self.assertEqual((20 in finished, 21 in finished, 22 in finished), (False, True, True))
        self.assertEqual([finished.step(s) is not None for s in stepids], [False, True, True])
        self.assertNoStateHeld()
