"""Builder events: ``builder_added`` with the workers that may run the builder, then its state,
also across reconfigurations of the master, which announce changed worker lists by no message.
"""

from buildbot.config.builder import BuilderConfig
from buildbot.process.factory import BuildFactory
from buildbot.test import fakedb
from twisted.internet import defer

from buildstore_buildbot import BuildstoreReporter
from buildstore_buildbot.test.test_reporter import MASTER
from buildstore_buildbot.test.test_reporter import ReporterTestCase


class TestBuilders(ReporterTestCase):
    def test_builders_of_this_master_announced_at_start(self):
        added = [e for e in self.sent if e["type"] == "builder_added"]
        self.assertEqual(len(added), 1)
        self.assertEqual(added[0]["builder"], "linux64")
        self.assertEqual(added[0]["slaves"], ["bld-01", "bld-02"])
        self.assertEqual(added[0]["master_id"], "m1")
        # No worker is connected, so the builder can't build.
        states = [e["state"] for e in self.sent if e["type"] == "builder_state"]
        self.assertEqual(states, ["offline"])

    @defer.inlineCallbacks
    def test_state_follows_workers_and_builds(self):
        self.take()
        yield self.master.db.workers.workerConfigured(workerid=13, masterid=MASTER, builderids=[79])
        yield self.master.db.workers.workerConnected(workerid=13, masterid=MASTER, workerinfo={})
        worker = yield self.master.data.get(("workers", 13))
        yield self.deliver(("workers", "13", "connected"), worker)
        self.assertEqual([e["state"] for e in self.take("builder_state")], ["idle"])

        yield self.build_message("new")
        self.assertEqual([e["state"] for e in self.take("builder_state")], ["building"])
        yield self.master.db.builds.finishBuild(buildid=20, results=0)
        yield self.build_message("finished")
        self.assertEqual([e["state"] for e in self.take("builder_state")], ["idle"])

    @defer.inlineCallbacks
    def test_a_build_that_ends_while_it_is_first_read_leaves_its_builder_idle(self):
        # Buildbot sends a step's messages before the build's "new" (worker_preparation), and
        # none at all for a build that do_build_if skips: a build is often first read from the
        # data API on a later message, and it may end during those reads.
        self.take()
        yield self.master.db.workers.workerConfigured(workerid=13, masterid=MASTER, builderids=[79])
        yield self.master.db.workers.workerConnected(workerid=13, masterid=MASTER, workerinfo={})
        worker = yield self.master.data.get(("workers", 13))
        yield self.deliver(("workers", "13", "connected"), worker)
        stepid, _ = yield self.add_step(name="worker_preparation")
        held = defer.Deferred()
        read = self.master.data.get

        def get(path, *args, **kwargs):
            if path[0] == "buildrequests" and not held.called:
                answer = defer.Deferred()
                held.addCallback(lambda _: read(path, *args, **kwargs).addCallback(answer.callback))
                return answer
            return read(path, *args, **kwargs)

        self.patch(self.master.data, "get", get)
        step = yield read(("steps", stepid))
        self.master.mq.callConsumer(("steps", str(stepid), "started"), step)
        build = yield read(("builds", 20))
        self.master.mq.callConsumer(("builds", "20", "new"), build)
        yield self.master.db.steps.finishStep(stepid=stepid, results=0, hidden=False)
        yield self.master.db.builds.finishBuild(buildid=20, results=0)
        build = yield read(("builds", 20))
        self.master.mq.callConsumer(("builds", "20", "finished"), build)
        held.callback(None)
        yield self.reporter.wait_idle()
        sent = self.take()
        self.assertIn("build_finished", [e["type"] for e in sent])
        states = [e["state"] for e in sent if e["type"] == "builder_state"]
        self.assertEqual(states[-1], "idle", states)
        # The next build's end finds the builder idle again too: no build is left counted.
        yield self.master.db.insert_test_data([self.build_row(21, 2)])
        yield self.build_message("new", buildid=21)
        yield self.master.db.builds.finishBuild(buildid=21, results=0)
        yield self.build_message("finished", buildid=21)
        states = [e["state"] for e in self.take("builder_state")]
        self.assertEqual(states, ["building", "idle"])

    @defer.inlineCallbacks
    def test_event_ids_of_builder_events_never_repeat(self):
        yield self.build_message("new")
        yield self.master.db.builds.finishBuild(buildid=20, results=0)
        yield self.build_message("finished")
        ids = [e["event_id"] for e in self.sent if e["type"].startswith("builder_")]
        self.assertGreaterEqual(len(ids), 3)
        self.assertEqual(len(ids), len(set(ids)))

    @defer.inlineCallbacks
    def test_master_shutdown_sets_offline_and_removal_from_config_removes(self):
        self.take()
        stopped = {"builderid": 79, "masterid": MASTER, "name": "linux64"}
        self.master.config.builders[0].workernames.append("x")  # any state change will do
        yield self.build_message("new")  # building
        self.take()
        yield self.deliver(("builders", "79", "stopped"), stopped)
        self.assertEqual([e["state"] for e in self.take("builder_state")], ["offline"])

        self.master.config.builders = []
        yield self.deliver(("builders", "79", "stopped"), stopped)
        self.assertEqual([e["builder"] for e in self.take("builder_removed")], ["linux64"])


class TestBuilderReconfig(ReporterTestCase):
    """Reconfigurations as Buildbot 4 runs them: under the master's ``initLock``, the services
    (this reporter among them) before the workers, which then write the builders they serve to
    the database. No mq message tells of a changed worker list."""

    @defer.inlineCallbacks
    def reconfigure(self, builders, worker_builders=(), messages=()):
        """Reconfigures the master; returns what was sent before the reconfiguration ended.

        ``builders`` maps builder names to worker names, ``worker_builders`` gives each worker's
        builders as the workers write them, ``messages`` what the botmaster announces first.
        """
        yield self.master.initLock.acquire()
        self.master.config.builders = [
            BuilderConfig(name=name, workernames=list(workers), factory=BuildFactory())
            for name, workers in builders.items()
        ]
        for key, message in messages:
            yield self.deliver(key, message)
        sibling = BuildstoreReporter("tcp://127.0.0.1:9989", master_id="m1")
        yield self.reporter.reconfigServiceWithSibling(sibling)
        for workerid, builderids in worker_builders:
            yield self.master.db.workers.workerConfigured(
                workerid=workerid, masterid=MASTER, builderids=builderids
            )
        yield self.reporter.wait_idle()
        during = self.take()
        self.master.initLock.release()
        yield self.reporter.wait_idle()
        return during

    def summary(self):
        return [(e["type"], e["builder"], e.get("slaves"), e.get("state")) for e in self.take()]

    @defer.inlineCallbacks
    def connect_bld_02(self, builderids):
        yield self.master.db.workers.workerConfigured(
            workerid=13, masterid=MASTER, builderids=builderids
        )
        yield self.master.db.workers.workerConnected(workerid=13, masterid=MASTER, workerinfo={})
        worker = yield self.master.data.get(("workers", 13))
        yield self.deliver(("workers", "13", "connected"), worker)

    @defer.inlineCallbacks
    def test_changed_workers_send_the_builder_again_and_the_same_workers_do_not(self):
        self.take()
        during = yield self.reconfigure({"linux64": ["bld-02", "bld-03"]})
        self.assertEqual(during, [])  # sent once the reconfiguration is over
        self.assertEqual(
            self.summary(),
            [
                ("builder_added", "linux64", ["bld-02", "bld-03"], None),
                ("builder_state", "linux64", None, "offline"),
            ],
        )
        yield self.reconfigure({"linux64": ["bld-02", "bld-03"]})
        self.assertEqual(self.take(), [])

    @defer.inlineCallbacks
    def test_a_busy_builder_sent_again_is_building_again_at_once(self):
        # builder_added resets the builder to offline in the daemon.
        yield self.build_message("new")
        self.take()
        yield self.reconfigure({"linux64": ["bld-02"]})
        self.assertEqual(
            self.summary(),
            [
                ("builder_added", "linux64", ["bld-02"], None),
                ("builder_state", "linux64", None, "building"),
            ],
        )

    @defer.inlineCallbacks
    def test_the_state_after_a_reconfig_is_the_one_the_reconfigured_workers_give(self):
        yield self.connect_bld_02([79])
        self.take()
        # bld-02 leaves the builder; it stays connected (for other builders, say).
        yield self.reconfigure({"linux64": ["bld-01"]}, [(13, [])])
        self.assertEqual(
            self.summary(),
            [
                ("builder_added", "linux64", ["bld-01"], None),
                ("builder_state", "linux64", None, "offline"),
            ],
        )
        yield self.reconfigure({"linux64": ["bld-01", "bld-02"]}, [(13, [79])])
        self.assertEqual(
            self.summary(),
            [
                ("builder_added", "linux64", ["bld-01", "bld-02"], None),
                ("builder_state", "linux64", None, "idle"),
            ],
        )

    @defer.inlineCallbacks
    def test_a_builder_added_by_a_reconfig_is_idle_once_its_connected_worker_serves_it(self):
        yield self.connect_bld_02([])  # connected, but serving no builder yet
        yield self.master.db.insert_test_data(
            [
                fakedb.Builder(id=80, name="win64"),
                fakedb.BuilderMaster(builderid=80, masterid=MASTER),
            ]
        )
        self.take()
        started = (
            ("builders", "80", "started"),
            {"builderid": 80, "masterid": MASTER, "name": "win64"},
        )
        during = yield self.reconfigure(
            {"linux64": ["bld-01", "bld-02"], "win64": ["bld-02"]},
            [(13, [79, 80])],
            [started],
        )
        # The builder announced by the botmaster is described at once, still without workers.
        self.assertEqual(
            [(e["type"], e["builder"], e.get("state")) for e in during],
            [("builder_added", "win64", None), ("builder_state", "win64", "offline")],
        )
        self.assertEqual(
            sorted(self.summary()),
            [
                ("builder_state", "linux64", None, "idle"),
                ("builder_state", "win64", None, "idle"),
            ],
        )
