"""Late messages about a build that was complete before this service saw anything of it: it ended
before the service started (added by a reconfig, or the master restarted), or the service saw it
end so long ago that it forgot it. No "finished" message will come for it, so the message's events
are sent and the build is finished right after them, leaving no state behind.
"""

from twisted.internet import defer

from buildstore_buildbot.test.test_reporter import HEAD
from buildstore_buildbot.test.test_reporter import ReporterTestCase


class TestCompleteBuilds(ReporterTestCase):
    """Build 20 runs and ends in the database only: the reporter gets none of its messages."""

    @defer.inlineCallbacks
    def run_unseen(self, text="ocompiled\n", finish_step=True, results=2):
        stepid, number = yield self.add_step()
        logid = yield self.add_log(stepid, "stdio", announce=False)
        if text:
            yield self.master.db.logs.appendLog(logid, text)
        if finish_step:
            yield self.master.db.steps.finishStep(stepid=stepid, results=results, hidden=False)
        yield self.master.db.builds.finishBuild(buildid=20, results=results)
        self.take()
        return stepid, number, logid

    def assertFinishedWithNoStateHeld(self, buildid=20):
        self.assertEqual((self.reporter._builds, self.reporter._steps), ({}, {}))
        self.assertIn(buildid, self.reporter._finished)

    @defer.inlineCallbacks
    def test_a_late_log_message_starts_the_build_sends_its_text_and_finishes_it(self):
        stepid, number, logid = yield self.run_unseen(text="ofirst\n", finish_step=False)
        announced = yield self.master.data.get(("logs", logid))  # the append of the first line
        yield self.master.db.logs.appendLog(logid, "osecond\n")
        yield self.master.db.steps.finishStep(stepid=stepid, results=2, hidden=False)
        yield self.deliver(("logs", str(logid), "append"), announced)

        sent = self.take()
        self.assertEqual(
            [e["type"] for e in sent],
            ["build_started", "step_started", "log", "log", "step_finished", "build_finished"],
        )
        # The message's own text, then the rest of the log, read before the step's end.
        self.assertEqual([e["text"] for e in sent if e["type"] == "log"], ["first\n", "second\n"])
        self.assertEqual((sent[4]["step"], sent[4]["result"]), (number, 2))
        self.assertEqual(
            (sent[-1]["event_id"], sent[-1]["build_id"], sent[-1]["result"]),
            ("build-20-finished", 20, 2),
        )
        self.assertIsInstance(sent[-1]["time"], (int, float))
        self.assertFinishedWithNoStateHeld()
        # Further appends of the log are late messages about a finished build: nothing to send.
        yield self.log_message(logid)
        self.assertEqual(self.take(), [])
        self.assertFinishedWithNoStateHeld()

    @defer.inlineCallbacks
    def test_a_late_step_message_finishes_the_step_once_and_then_the_build(self):
        stepid, _, _ = yield self.run_unseen()
        yield self.step_message(stepid, "finished")
        sent = [e["type"] for e in self.take()]
        self.assertEqual(
            sent, ["build_started", "step_started", "log", "step_finished", "build_finished"]
        )
        self.assertFinishedWithNoStateHeld()
        yield self.step_message(stepid, "finished")  # logged, as after any build's end
        self.assertEqual(self.take(), [])

    @defer.inlineCallbacks
    def test_a_late_new_or_updated_step_message_keeps_no_state(self):
        stepid, _, _ = yield self.run_unseen()
        for what in ("new", "updated"):
            yield self.step_message(stepid, what)
            self.assertEqual(self.take(), [])
            self.assertEqual((self.reporter._builds, self.reporter._steps), ({}, {}))

    @defer.inlineCallbacks
    def test_a_late_property_message_starts_and_finishes_the_build(self):
        yield self.run_unseen()
        yield self.master.db.builds.setBuildProperty(20, "got_revision", HEAD, "Git")
        props = {"got_revision": (HEAD, "Git")}
        yield self.deliver(("builds", "20", "properties", "update"), props)
        sent = self.take()
        # Read with the build, the property comes in build_started: no property event for it.
        self.assertEqual([e["type"] for e in sent], ["build_started", "build_finished"])
        self.assertEqual(sent[0]["properties"]["got_revision"], {"value": HEAD, "source": "Git"})
        self.assertFinishedWithNoStateHeld()
        yield self.deliver(("builds", "20", "properties", "update"), props)
        self.assertEqual(self.take(), [])
        # A new value is a change, sent for the finished build as any late property.
        yield self.deliver(("builds", "20", "properties", "update"), {"owner": ("me", "Force")})
        self.assertEqual([e["type"] for e in self.take()], ["property"])
        self.assertFinishedWithNoStateHeld()

    @defer.inlineCallbacks
    def test_a_property_the_build_does_not_hold_goes_out_before_build_finished(self):
        yield self.run_unseen()
        yield self.deliver(("builds", "20", "properties", "update"), {"owner": ("me", "Force")})
        sent = [e["type"] for e in self.take()]
        self.assertEqual(sent, ["build_started", "property", "build_finished"])
        self.assertFinishedWithNoStateHeld()

    @defer.inlineCallbacks
    def test_a_step_a_stopped_master_never_finished_is_left_open(self):
        _, _, logid = yield self.run_unseen(finish_step=False)
        yield self.log_message(logid)
        sent = [e["type"] for e in self.take()]
        self.assertEqual(sent, ["build_started", "step_started", "log", "build_finished"])
        self.assertFinishedWithNoStateHeld()

    @defer.inlineCallbacks
    def test_a_build_forgotten_after_its_end_is_sent_again_with_the_same_ids(self):
        self.reporter._finished.kept = 1
        stepid, _, logid = yield self.start_build_with_step()
        yield self.master.db.logs.appendLog(logid, "ocompiled\n")
        yield self.log_message(logid)
        yield self.finish_step(stepid)
        yield self.master.db.builds.finishBuild(buildid=20, results=0)
        yield self.build_message("finished")
        first = {e["event_id"] for e in self.take() if not e["type"].startswith("builder_")}
        yield self.master.db.insert_test_data([self.build_row(21, 413)])
        yield self.build_message("new", 21)
        yield self.master.db.builds.finishBuild(buildid=21, results=0)
        yield self.build_message("finished", 21)
        self.assertNotIn(20, self.reporter._finished)
        self.take()

        yield self.log_message(logid)
        again = self.take()
        self.assertEqual(
            [e["type"] for e in again],
            ["build_started", "step_started", "log", "step_finished", "build_finished"],
        )
        # All of it with the ids the daemon already applied, so it skips all of it.
        self.assertLessEqual({e["event_id"] for e in again}, first)
        self.assertFinishedWithNoStateHeld()

    @defer.inlineCallbacks
    def test_a_finished_message_during_the_reads_finishes_the_build_once(self):
        yield self.run_unseen()
        real_get = self.master.data.get
        held = defer.Deferred()

        def get(path, **kw):
            if path == ("builds", 20) and not held.called:
                return held.addCallback(lambda _: real_get(path, **kw))
            return real_get(path, **kw)

        self.patch(self.master.data, "get", get)
        self.master.mq.callConsumer(
            ("builds", "20", "properties", "update"), {"owner": ("me", "Force")}
        )
        build = yield real_get(("builds", 20))
        self.master.mq.callConsumer(("builds", "20", "finished"), build)
        held.callback(None)
        yield self.reporter.wait_idle()
        sent = [e["type"] for e in self.take() if not e["type"].startswith("builder_")]
        self.assertEqual(sent, ["build_started", "property", "build_finished"])
        self.assertFinishedWithNoStateHeld()

    @defer.inlineCallbacks
    def test_a_failing_step_read_still_finishes_the_build(self):
        stepid, _, logid = yield self.run_unseen()
        real_get = self.master.data.get
        reads = []

        def get(path, **kw):
            if path == ("steps", stepid):
                reads.append(path)
                if len(reads) > 2:  # the reads for the log message work, the finish's fails
                    return defer.fail(RuntimeError("database is locked"))
            return real_get(path, **kw)

        self.patch(self.master.data, "get", get)
        yield self.log_message(logid)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        sent = [e["type"] for e in self.take()]
        self.assertEqual(sent, ["build_started", "step_started", "log", "build_finished"])
        self.assertFinishedWithNoStateHeld()
