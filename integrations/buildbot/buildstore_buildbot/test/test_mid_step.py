"""A service that starts in the middle of a step (added by a reconfig while builds run): the
step's log goes out once and in order, whatever order its messages and reads come in.
"""

from twisted.internet import defer

from buildstore_buildbot.test.test_reporter import ReporterTestCase


class TestStartedMidStep(ReporterTestCase):
    @defer.inlineCallbacks
    def test_a_step_message_during_the_read_for_a_log_message_keeps_the_log_in_order(self):
        stepid, _ = yield self.add_step()
        logid = yield self.add_log(stepid, "stdio", announce=False)
        yield self.master.db.logs.appendLog(logid, "ofirst\n")
        real_get = self.master.data.get
        step = yield real_get(("steps", stepid))
        first = yield real_get(("logs", logid))

        # The read of the step, for the first log message, is answered only at the end.
        held = defer.Deferred()

        def get(path, **kw):
            if path == ("steps", stepid) and not held.called:
                return held.addCallback(lambda _: real_get(path, **kw))
            return real_get(path, **kw)

        self.patch(self.master.data, "get", get)
        self.master.mq.callConsumer(("logs", str(logid), "append"), first)
        # Meanwhile the step's own message comes, and the log grows.
        self.master.mq.callConsumer(("steps", str(stepid), "started"), step)
        yield self.master.db.logs.appendLog(logid, "osecond\n")
        second = yield real_get(("logs", logid))
        self.master.mq.callConsumer(("logs", str(logid), "append"), second)
        held.callback(None)
        yield self.reporter.wait_idle()
        yield self.master.db.logs.appendLog(logid, "othird\n")
        yield self.log_message(logid)

        logs = [(e["offset"], e["text"]) for e in self.take("log")]
        text = "".join(t for _, t in logs)
        self.assertEqual(text, "first\nsecond\nthird\n")
        offsets = [o for o, _ in logs]
        self.assertEqual(offsets, sorted(set(offsets)), logs)

    @defer.inlineCallbacks
    def test_a_build_running_before_the_service_started_shows_its_builder_building(self):
        stepid, _ = yield self.add_step()
        yield self.step_message(stepid, "started")
        yield self.reporter.wait_idle()
        states = [e["state"] for e in self.take("builder_state")]
        self.assertEqual(states[-1:], ["building"])
        yield self.finish_step(stepid)
        yield self.master.db.builds.finishBuild(buildid=20, results=0)
        yield self.build_message("finished")
        yield self.reporter.wait_idle()
        states = [e["state"] for e in self.take("builder_state")]
        self.assertEqual(len(states), 1, "the end of the build is shown")
        self.assertEqual(states, ["offline"], "not building; this master has no worker")
