"""The reporter on Buildbot's fake master: mq messages and data API reads in, v1 events out.

The database behind the fake master is a real (in-memory) Buildbot database, written through
Buildbot's own DB API; messages are the data API's dicts delivered to the reporter's consumers.
A recording client stands in for the connection to the daemon.
"""

from collections import deque

from buildbot.config.builder import BuilderConfig
from buildbot.process.factory import BuildFactory
from buildbot.test import fakedb
from buildbot.test.fake import fakemaster
from buildbot.test.reactor import TestReactorMixin
from twisted.internet import defer
from twisted.python import log
from twisted.trial import unittest

from buildstore_buildbot import BuildstoreReporter

MASTER = fakedb.FakeDBConnector.MASTER_ID
REPO = "https://git.example.org/tessel/libtessel.git"
HEAD = "eb57b4930f682387ca57a2506b1dbd03f5144c04"
STARTED = 1773324451  # 2026-03-12T14:07:31Z


class RecordingClient:
    """Takes the place of BuildstoreClient: keeps what was sent."""

    def __init__(
        self,
        address,
        token=None,
        queue_size=10000,
        queue_bytes=64 << 20,
        reactor=None,
        max_backoff=30.0,
    ):
        self.address = address
        self.token = token
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self.queue = deque()
        self.events = []
        self.started = False
        self.stopped = False
        self.backlog = None

    def start(self):
        self.started = True

    def send(self, event, on_safe=None):
        self.events.append(event)
        if on_safe is not None:
            on_safe()  # as if acknowledged at once
        return True

    def set_queue_size(self, size):
        self.queue_size = size

    def set_queue_bytes(self, size):
        self.queue_bytes = size

    def set_backlog(self, backlog):
        self.backlog = backlog

    def take_queue(self, other):
        self.queue.extend(other.queue)
        other.queue.clear()
        other.backlog = None

    def stop(self, timeout=5.0):
        self.stopped = True
        self.stop_timeout = timeout
        return defer.succeed(None)


class ReporterTestCase(TestReactorMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        self.master = yield fakemaster.make_master(self, wantData=True, wantDb=True, wantMq=True)
        # Buildbot's message validators lag behind the data API (datetimes, 'finished'), so the
        # messages here are the data API's own dicts, unvalidated.
        self.master.mq.verifyMessages = False
        self.master.config.builders = [
            BuilderConfig(name="linux64", workernames=["bld-01", "bld-02"], factory=BuildFactory())
        ]
        yield self.master.db.insert_test_data(
            [
                fakedb.Master(id=MASTER),
                fakedb.Builder(id=79, name="linux64"),
                fakedb.BuilderMaster(builderid=79, masterid=MASTER),
                fakedb.Worker(id=13, name="bld-02"),
                fakedb.Buildset(id=98, reason="The web-page 'force build' button was pressed"),
                fakedb.SourceStamp(
                    id=234, branch="main", revision=None, repository=REPO, codebase=""
                ),
                fakedb.BuildsetSourceStamp(buildsetid=98, sourcestampid=234),
                fakedb.BuildRequest(id=11, buildsetid=98, builderid=79),
                fakedb.Change(
                    changeid=5,
                    author="Tomás Ferreira <tomas@example.org>",
                    comments="mesh: handle degenerate triangles\n\nLonger text.",
                    revision=HEAD,
                    when_timestamp=1773316360,
                    branch="main",
                    repository=REPO,
                    sourcestampid=234,
                ),
                fakedb.ChangeFile(changeid=5, filename="src/mesh.c"),
                self.build_row(20, 412),
                fakedb.BuildProperty(
                    buildid=20, name="scheduler", value="force", source="Scheduler"
                ),
            ]
        )
        self.reporter = BuildstoreReporter("tcp://127.0.0.1:9989", master_id="m1")
        self.reporter.client_class = RecordingClient
        yield self.reporter.setServiceParent(self.master)
        yield self.master.startService()
        self.addCleanup(self.master.stopService)
        yield self.reporter.wait_idle()

    @property
    def sent(self):
        return self.reporter.client.events

    def take(self, kind=None):
        """The events sent since the last call, optionally only those of one type."""
        events, self.reporter.client.events = self.sent, []
        return [e for e in events if kind is None or e["type"] == kind]

    @defer.inlineCallbacks
    def deliver(self, key, message):
        self.master.mq.callConsumer(key, message)
        yield self.reporter.wait_idle()

    @defer.inlineCallbacks
    def build_message(self, what, buildid=20):
        build = yield self.master.data.get(("builds", buildid))
        yield self.deliver(("builds", str(buildid), what), build)

    @defer.inlineCallbacks
    def step_message(self, stepid, what):
        step = yield self.master.data.get(("steps", stepid))
        yield self.deliver(("steps", str(stepid), what), step)

    @defer.inlineCallbacks
    def finish_step(self, stepid, results=0):
        """Finishes the step in the database and delivers its message."""
        yield self.master.db.steps.finishStep(stepid=stepid, results=results, hidden=False)
        yield self.step_message(stepid, "finished")

    @defer.inlineCallbacks
    def log_message(self, logid, what="append"):
        logdict = yield self.master.data.get(("logs", logid))
        yield self.deliver(("logs", str(logid), what), logdict)

    @staticmethod
    def build_row(buildid, number, masterid=MASTER):
        """A build of builder 79 in the database, like build 20."""
        return fakedb.Build(
            id=buildid,
            number=number,
            builderid=79,
            buildrequestid=11,
            workerid=13,
            masterid=masterid,
            started_at=STARTED,
        )

    @defer.inlineCallbacks
    def add_step(self, buildid=20, name="compile", start=True):
        """A step of the build in the database only, started unless not ``start``."""
        stepid, number, _ = yield self.master.db.steps.addStep(
            buildid=buildid, name=name, state_string="pending"
        )
        if start:
            yield self.master.db.steps.startStep(
                stepid=stepid, started_at=STARTED + 1, locks_acquired=True
            )
        return stepid, number

    @defer.inlineCallbacks
    def start_build_and_step(self, name="compile"):
        """A started build with a started step that has no log yet."""
        yield self.build_message("new")
        stepid, number = yield self.add_step(name=name)
        yield self.step_message(stepid, "new")
        yield self.step_message(stepid, "started")
        return stepid, number

    @defer.inlineCallbacks
    def add_log(self, stepid, name, type="s", announce=True):
        logid = yield self.master.db.logs.addLog(stepid=stepid, name=name, slug=name, type=type)
        if announce:
            yield self.log_message(logid, "new")
        return logid

    @defer.inlineCallbacks
    def start_build_with_step(self, name="compile"):
        stepid, number = yield self.start_build_and_step(name)
        logid = yield self.add_log(stepid, "stdio")
        return stepid, number, logid

    def fail_log_reads(self, times):
        """Makes the next ``times`` reads of log text fail; returns the offsets of the reads."""
        real_get = self.master.data.get
        offsets = []

        def get(path, **kw):
            if path[-1] == "contents":
                offsets.append(kw.get("offset"))
                if len(offsets) <= times:
                    return defer.fail(RuntimeError("database is locked"))
            return real_get(path, **kw)

        self.patch(self.master.data, "get", get)
        return offsets

    def capture_log(self):
        """The lines logged from now on, errors with their message."""
        lines = []

        def observe(event):
            lines.append(log.textFromEventDict(event) or "")

        log.addObserver(observe)
        self.addCleanup(log.removeObserver, observe)
        return lines


class TestBuilds(ReporterTestCase):
    @defer.inlineCallbacks
    def test_build_started_carries_the_build_as_buildbot_has_it(self):
        self.take()
        yield self.build_message("new")
        [event] = self.take("build_started")
        self.assertEqual(event["event_id"], "build-20-started")
        self.assertEqual(event["build_id"], 20)
        self.assertEqual(event["number"], 412)
        self.assertEqual(event["builder"], "linux64")
        self.assertEqual(event["slaves"], ["bld-02"])
        self.assertEqual(event["time"], STARTED)
        self.assertIsNone(event["changeset"])  # forced without a revision
        self.assertEqual(event["branch"], "main")
        self.assertEqual(event["repository"], REPO)
        self.assertEqual(event["codebase"], "")
        self.assertEqual(event["reason"], "The web-page 'force build' button was pressed")
        self.assertEqual(
            event["properties"], {"scheduler": {"value": "force", "source": "Scheduler"}}
        )
        self.assertEqual(
            event["changes"],
            [
                {
                    "revision": HEAD,
                    "author": "Tomás Ferreira <tomas@example.org>",
                    "comments": "mesh: handle degenerate triangles\n\nLonger text.",
                    "files": ["src/mesh.c"],
                    "when": 1773316360,
                    "branch": "main",
                    "repository": REPO,
                }
            ],
        )

    @defer.inlineCallbacks
    def test_build_finished_with_result(self):
        yield self.build_message("new")
        self.take()
        yield self.master.db.builds.finishBuild(buildid=20, results=2)
        yield self.build_message("finished")
        [event] = self.take("build_finished")
        self.assertEqual(event["event_id"], "build-20-finished")
        self.assertEqual(event["result"], 2)
        self.assertIsInstance(event["time"], (int, float))

    @defer.inlineCallbacks
    def test_builds_of_other_masters_are_not_reported(self):
        yield self.master.db.insert_test_data(
            [
                fakedb.Master(id=MASTER + 1, name="other"),
                self.build_row(21, 1, masterid=MASTER + 1),
            ]
        )
        self.take()
        yield self.build_message("new", buildid=21)
        yield self.deliver(("builds", "21", "properties", "update"), {"x": (1, "Step")})
        self.assertEqual(self.take(), [])

    @defer.inlineCallbacks
    def test_property_update_becomes_property_event(self):
        yield self.build_message("new")
        self.take()
        props = {"got_revision": (HEAD, "Git")}
        yield self.deliver(("builds", "20", "properties", "update"), props)
        [event] = self.take()
        self.assertEqual(event["type"], "property")
        self.assertEqual(
            (event["build_id"], event["name"], event["value"], event["source"]),
            (20, "got_revision", HEAD, "Git"),
        )
        # The same value again is no change; a value that comes back is a new event.
        yield self.deliver(("builds", "20", "properties", "update"), props)
        self.assertEqual(self.take(), [])
        yield self.deliver(("builds", "20", "properties", "update"), {"got_revision": ("x", "Git")})
        yield self.deliver(("builds", "20", "properties", "update"), props)
        ids = [e["event_id"] for e in self.take()]
        self.assertEqual(len(ids), 2)
        self.assertNotIn(event["event_id"], ids)

    @defer.inlineCallbacks
    def test_properties_known_at_start_are_not_repeated(self):
        huge = 1 << 70  # sent as its digits: still the same value
        yield self.master.db.builds.setBuildProperty(20, "id", huge, "Build")
        yield self.build_message("new")
        self.take()
        for name, pair in (("scheduler", ("force", "Scheduler")), ("id", (huge, "Build"))):
            yield self.deliver(("builds", "20", "properties", "update"), {name: pair})
        self.assertEqual(self.take(), [])

    @defer.inlineCallbacks
    def test_messages_before_new_still_start_the_build_first(self):
        # A property update for a build this reporter has not seen start.
        self.take()
        yield self.deliver(("builds", "20", "properties", "update"), {"owner": ("me", "Force")})
        sent = self.take()
        self.assertEqual([e["type"] for e in sent], ["build_started", "builder_state", "property"])
        self.assertEqual(sent[1]["state"], "building")  # the build runs

    @defer.inlineCallbacks
    def test_change_with_full_hash_becomes_commit(self):
        change = yield self.master.data.get(("changes", 5))
        self.take()
        yield self.deliver(("changes", "5", "new"), change)
        [event] = self.take()
        self.assertEqual(event["type"], "commit")
        self.assertEqual(event["hash"], HEAD)
        self.assertEqual(event["repository_uri"], REPO)
        self.assertEqual(event["subject"], "mesh: handle degenerate triangles")
        self.assertEqual(
            (event["author_name"], event["author_email"]), ("Tomás Ferreira", "tomas@example.org")
        )


class TestSteps(ReporterTestCase):
    @defer.inlineCallbacks
    def test_step_started_and_finished(self):
        self.take()
        stepid, number, _ = yield self.start_build_with_step("compile")
        started = self.take("step_started")
        self.assertEqual(len(started), 1)
        self.assertEqual(started[0]["event_id"], f"step-{stepid}-started")
        self.assertEqual((started[0]["build_id"], started[0]["step"]), (20, number))
        self.assertEqual(started[0]["name"], "compile")
        self.assertEqual(started[0]["time"], STARTED + 1)

        yield self.master.db.steps.setStepStateString(stepid=stepid, state_string="compile failed")
        yield self.finish_step(stepid, results=2)
        [finished] = self.take("step_finished")
        self.assertEqual(finished["event_id"], f"step-{stepid}-finished")
        self.assertEqual((finished["step"], finished["result"]), (number, 2))
        self.assertEqual(finished["text"], "compile failed")

    @defer.inlineCallbacks
    def test_unknown_results_are_reported_as_exception(self):
        stepid, _, _ = yield self.start_build_with_step()
        step = yield self.master.data.get(("steps", stepid))
        step["results"] = None
        yield self.deliver(("steps", str(stepid), "finished"), step)
        [finished] = self.take("step_finished")
        self.assertEqual(finished["result"], 4)

    @defer.inlineCallbacks
    def test_log_lines_split_per_channel_with_byte_offsets(self):
        _, number, logid = yield self.start_build_with_step()
        self.take()
        yield self.master.db.logs.appendLog(
            logid, "hmake -j4\nocc -c mesh.c\nemesh.c:12: warning\n"
        )
        yield self.log_message(logid)
        yield self.master.db.logs.appendLog(logid, "océu\noend\neld: done\n")
        yield self.log_message(logid)

        logs = self.take("log")
        by_channel = {}
        for e in logs:
            self.assertEqual((e["build_id"], e["step"]), (20, number))
            end = e["offset"] + len(e["text"].encode())
            self.assertEqual(e["event_id"], f"log-{logid}-{e['channel']}-@{e['offset']}-{end}")
            by_channel.setdefault(e["channel"], []).append((e["offset"], e["text"]))
        self.assertEqual(by_channel["header"], [(0, "make -j4\n")])
        # "cc -c mesh.c\n" is 13 bytes; the next chunk starts there, "céu" counts é as 2 bytes.
        self.assertEqual(by_channel["stdout"], [(0, "cc -c mesh.c\n"), (13, "céu\nend\n")])
        self.assertEqual(by_channel["stderr"], [(0, "mesh.c:12: warning\n"), (19, "ld: done\n")])

    @defer.inlineCallbacks
    def test_a_long_log_is_read_a_slice_at_a_time_and_sent_whole(self):
        from buildstore_buildbot import logs

        self.patch(logs, "READ_LINES", 3)
        stepid, _, logid = yield self.start_build_with_step()
        self.take()
        offsets = self.fail_log_reads(0)
        text = "".join(f"oline {n}\n" for n in range(10))
        yield self.master.db.logs.appendLog(logid, text)
        yield self.finish_step(stepid)
        self.assertEqual(offsets, [0, 3, 6, 9])
        sent = "".join(e["text"] for e in self.take("log"))
        self.assertEqual(sent, "".join(f"line {n}\n" for n in range(10)))

    @defer.inlineCallbacks
    def test_log_text_announced_late_is_sent_before_step_finished(self):
        stepid, _, logid = yield self.start_build_with_step()
        self.take()
        yield self.master.db.logs.appendLog(logid, "olast words\n")
        yield self.finish_step(stepid)
        yield self.log_message(logid)  # the append message arrives after the step finished
        sent = self.take()
        self.assertEqual([e["type"] for e in sent], ["log", "step_finished"])
        self.assertEqual(sent[0]["text"], "last words\n")

    @defer.inlineCallbacks
    def test_non_stdio_logs_are_ignored(self):
        stepid, _, _ = yield self.start_build_with_step()
        textlog = yield self.master.db.logs.addLog(
            stepid=stepid, name="summary", slug="summary", type="t"
        )
        yield self.master.db.logs.appendLog(textlog, "a text log\n")
        self.take()
        yield self.log_message(textlog)
        self.assertEqual(self.take(), [])

    @defer.inlineCallbacks
    def test_a_failing_data_read_is_logged_and_later_messages_still_work(self):
        _, _, logid = yield self.start_build_with_step()
        self.take()
        real_get = self.master.data.get

        def broken_get(path, **kw):
            if path[-1] == "contents":
                return defer.fail(RuntimeError("database is locked"))
            return real_get(path, **kw)

        self.patch(self.master.data, "get", broken_get)
        yield self.master.db.logs.appendLog(logid, "oone\n")
        yield self.log_message(logid)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.patch(self.master.data, "get", real_get)
        yield self.master.db.logs.appendLog(logid, "otwo\n")
        yield self.log_message(logid)
        # The failed read is retried from the same line, so nothing is lost.
        self.assertEqual([e["text"] for e in self.take("log")], ["one\ntwo\n"])

    @defer.inlineCallbacks
    def test_a_log_read_failing_at_step_end_is_tried_again_after_a_pause(self):
        stepid, _, logid = yield self.start_build_with_step()
        self.take()
        reads = self.fail_log_reads(times=1)
        yield self.master.db.logs.appendLog(logid, "olast words\n")
        yield self.master.db.steps.finishStep(stepid=stepid, results=0, hidden=False)
        step = yield self.master.data.get(("steps", stepid))
        self.master.mq.callConsumer(("steps", str(stepid), "finished"), step)
        # The step's end waits for the rest of its log.
        self.assertEqual((reads, self.take()), ([0], []))
        self.reactor.advance(0.5)
        yield self.reporter.wait_idle()
        self.assertEqual(reads, [0, 0])
        sent = self.take()
        self.assertEqual([e["type"] for e in sent], ["log", "step_finished"])
        self.assertEqual(sent[0]["text"], "last words\n")

    @defer.inlineCallbacks
    def test_a_step_whose_log_cannot_be_read_still_finishes_and_the_loss_is_logged(self):
        stepid, number, logid = yield self.start_build_with_step()
        yield self.master.db.logs.appendLog(logid, "ofirst\n")
        yield self.log_message(logid)
        self.take()
        reads = self.fail_log_reads(times=3)
        logged = self.capture_log()
        yield self.master.db.logs.appendLog(logid, "olost\n")
        yield self.master.db.steps.finishStep(stepid=stepid, results=0, hidden=False)
        step = yield self.master.data.get(("steps", stepid))
        self.master.mq.callConsumer(("steps", str(stepid), "finished"), step)
        # Three tries, 0.5 s and then 1 s apart, each from the first line not yet sent.
        for pause, tried in ((0.0, 1), (0.4, 1), (0.1, 2), (0.9, 2), (0.1, 3)):
            self.reactor.advance(pause)
            self.assertEqual(reads, [1] * tried)
        yield self.reporter.wait_idle()
        self.assertEqual([e["type"] for e in self.take()], ["step_finished"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        [line] = [line for line in logged if "cannot read the rest" in line]
        self.assertIn(f"step {number} 'compile' (stepid {stepid}) of build 20", line)
        self.assertIn(f"the first 1 lines of its log {logid} were sent (stdout 6 bytes)", line)

    @defer.inlineCallbacks
    def test_the_log_named_stdio_is_sent_also_when_another_stdio_type_log_came_first(self):
        stepid, _ = yield self.start_build_and_step()
        setup = yield self.add_log(stepid, "setup")
        stdio = yield self.add_log(stepid, "stdio")
        self.take()
        yield self.master.db.logs.appendLog(setup, "oprepared\n")
        yield self.log_message(setup)
        yield self.master.db.logs.appendLog(stdio, "ocompiled\n")
        yield self.log_message(stdio)
        self.assertEqual(
            [(e["event_id"], e["text"]) for e in self.take("log")],
            [(f"log-{stdio}-stdout-@0-9", "compiled\n")],
        )

    @defer.inlineCallbacks
    def assert_step_end_sends_only(self, stepid, logid, text):
        """Finishing the step sends ``text`` of ``logid``'s stdout, then step_finished."""
        self.take()
        yield self.finish_step(stepid)
        sent = self.take()
        self.assertEqual([e["type"] for e in sent], ["log", "step_finished"])
        self.assertEqual(
            (sent[0]["event_id"], sent[0]["text"]),
            (f"log-{logid}-stdout-@0-{len(text.encode())}", text),
        )

    @defer.inlineCallbacks
    def test_at_step_end_the_stdio_log_is_read_also_when_another_was_created_first(self):
        stepid, _ = yield self.start_build_and_step()
        # Never announced, as when the service started in the middle of the step.
        setup = yield self.add_log(stepid, "setup", announce=False)
        stdio = yield self.add_log(stepid, "stdio", announce=False)
        yield self.master.db.logs.appendLog(setup, "oprepared\n")
        yield self.master.db.logs.appendLog(stdio, "ocompiled\n")
        yield self.assert_step_end_sends_only(stepid, stdio, "compiled\n")

    @defer.inlineCallbacks
    def test_at_step_end_an_unannounced_stdio_log_wins_over_an_announced_one_with_nothing_sent(
        self,
    ):
        stepid, _ = yield self.start_build_and_step()
        yield self.add_log(stepid, "setup")  # announced, but no text yet
        stdio = yield self.add_log(stepid, "stdio", announce=False)
        yield self.master.db.logs.appendLog(stdio, "ocompiled\n")
        yield self.assert_step_end_sends_only(stepid, stdio, "compiled\n")

    @defer.inlineCallbacks
    def test_a_log_whose_text_was_sent_stays_the_steps_log_when_stdio_comes_later(self):
        # Its text already holds the channels' first offsets, which stdio's would take again.
        stepid, _ = yield self.start_build_and_step()
        setup = yield self.add_log(stepid, "setup")
        yield self.master.db.logs.appendLog(setup, "oprepared\n")
        yield self.log_message(setup)
        stdio = yield self.add_log(stepid, "stdio")
        yield self.master.db.logs.appendLog(stdio, "ocompiled\n")
        yield self.log_message(stdio)
        yield self.master.db.logs.appendLog(setup, "odone\n")
        yield self.log_message(setup)
        self.assertEqual(
            [(e["event_id"], e["text"]) for e in self.take("log")],
            [(f"log-{setup}-stdout-@0-9", "prepared\n"), (f"log-{setup}-stdout-@9-14", "done\n")],
        )

    @defer.inlineCallbacks
    def test_a_bad_message_does_not_raise_into_the_mq(self):
        self.master.mq.callConsumer(("steps", "1", "started"), {"unexpected": "shape"})
        yield self.reporter.wait_idle()
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)


class TestReconfig(ReporterTestCase):
    @defer.inlineCallbacks
    def test_new_address_takes_over_the_unacknowledged_events(self):
        old = self.reporter.client
        old.queue.extend(["pending-1", "pending-2"])
        sibling = BuildstoreReporter("unix:/run/buildstore.sock", master_id="m1")
        yield self.reporter.reconfigServiceWithSibling(sibling)
        new = self.reporter.client
        self.assertIsNot(new, old)
        self.assertEqual(
            (new.address, list(new.queue)),
            ("unix:/run/buildstore.sock", ["pending-1", "pending-2"]),
        )
        self.assertTrue(old.stopped)
        self.assertTrue(new.started)

    @defer.inlineCallbacks
    def test_same_address_keeps_the_connection(self):
        old = self.reporter.client
        sibling = BuildstoreReporter(
            "tcp://127.0.0.1:9989", master_id="m1", queue_size=5, queue_bytes=1 << 20
        )
        yield self.reporter.reconfigServiceWithSibling(sibling)
        self.assertIs(self.reporter.client, old)
        self.assertEqual((old.queue_size, old.queue_bytes), (5, 1 << 20))

    @defer.inlineCallbacks
    def test_queue_bytes_reaches_a_new_client(self):
        sibling = BuildstoreReporter("unix:/run/b.sock", master_id="m1", queue_bytes=1 << 20)
        yield self.reporter.reconfigServiceWithSibling(sibling)
        self.assertEqual(self.reporter.client.queue_bytes, 1 << 20)
