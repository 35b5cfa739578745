"""End to end: a real Buildbot master and worker report through the plugin to `buildstore serve`.

Everything runs on 127.0.0.1 in temporary directories: the daemon with an SQLite store, a master
whose master.cfg enables BuildstoreReporter, a worker, and a local git repository. Builds are
forced through the REST API and the outcome is read back with `buildstore export`.

Run with the daemon's binary in BUILDSTORE_BIN:

    BUILDSTORE_BIN=/path/to/buildstore python -m pytest integrations/buildbot/tests/test_e2e.py
"""

from __future__ import annotations

import re
import signal

import pytest

from e2e_cluster import BIN
from e2e_cluster import Cluster
from e2e_cluster import backlog_rows
from e2e_cluster import epoch
from e2e_cluster import MASTER_ID
from e2e_cluster import stop_process
from e2e_cluster import stored_build
from e2e_cluster import TICKS
from e2e_cluster import wait_for

pytestmark = pytest.mark.skipif(not BIN, reason="BUILDSTORE_BIN (the buildstore binary) not set")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("bbe2e"))
    try:
        with c.explained():
            c.make_repo()
            c.start_daemon()
            c.start_master()
            c.start_worker()
            c.wait_ready()
            for builder in ("checkout", "failing", "nocode"):
                c.force(builder)
        yield c
    finally:
        c.stop_all()


def test_checkout_corrects_changeset_and_links_commit(cluster):
    with cluster.explained():
        build, steps = cluster.complete_build("checkout", steps=2)
        assert build["result"] == 0
        assert build["master_id"] == MASTER_ID
        assert build["number"] == 1
        assert build["slaves"] == ["w1"]
        # Times are Buildbot's own, not the daemon's receive times.
        buildbot = cluster.buildbot_build("checkout")
        assert build["build_id"] == buildbot["buildid"]
        assert epoch(build["time_start"]) == buildbot["started_at"]
        assert epoch(build["time_end"]) == buildbot["complete_at"]
        assert build["branch"] == "main"
        assert build["repository"] == str(cluster.repo)
        assert "e2e checkout" in build["reason"]
        # Forced without a revision; the Git step's got_revision made it the real hash.
        assert build["changeset"] == cluster.head
        assert build["properties"]["got_revision"] == {"value": cluster.head, "source": "Git"}
        assert [s["name"] for s in steps] == ["git", "show"]
        assert all(s["result"] == 0 and s["successful"] for s in steps)
        assert steps[1]["stdout"] == cluster.head + "\n"
        assert "git log -1" in steps[1]["headers"]

        commits = {r["_id"]: r for r in cluster.export("repository")}
        assert list(commits) == [cluster.head]  # the other builds never checked anything out
        [linked] = commits[cluster.head]["builds"]
        assert linked["build"] == build["_id"]
        assert linked["result"] == 0
        assert commits[cluster.head]["repository_uri"] == str(cluster.repo)


def test_failing_step_fails_build_with_its_output(cluster):
    with cluster.explained():
        build, steps = cluster.complete_build("failing", steps=2)
        assert build["result"] == 2
        prepare, test = steps
        assert (prepare["result"], prepare["successful"], prepare["stdout"]) == (0, True, "ready\n")
        assert (test["result"], test["successful"]) == (2, False)
        assert test["stdout"] == "out-line\n"
        assert test["stderr"] == "err-line\n"
        assert "exit 3" in test["headers"]
        assert test["time_end"] is not None


def test_build_without_checkout_keeps_null_changeset(cluster):
    with cluster.explained():
        build, steps = cluster.complete_build("nocode", steps=1)
        assert build["result"] == 0
        assert build["changeset"] is None
        assert "got_revision" not in build["properties"]
        assert steps[0]["stdout"] == "hello\n"
        linked = [b["build"] for r in cluster.export("repository") for b in r["builds"]]
        assert build["_id"] not in linked


def test_builders_are_described_and_idle(cluster):
    with cluster.explained():
        for builder in ("checkout", "failing", "nocode"):
            cluster.complete_build(builder, steps={"nocode": 1}.get(builder, 2))

        def all_idle():
            docs = {b["name"]: b for b in cluster.export("builders")}
            done = set(docs) == {"checkout", "failing", "nocode", "slow"} and all(
                d["status"] == "idle" for d in docs.values()
            )
            return docs if done else None

        docs = wait_for("every builder to be idle", all_idle)
        assert all(d["slaves"] == ["w1"] and d["master_id"] == MASTER_ID for d in docs.values())


def test_daemon_killed_during_a_build_gets_everything_after_restart(cluster):
    with cluster.explained():
        cluster.force("slow")

        def ticking():
            build = cluster.build_doc("slow")
            steps = cluster.steps_of(build) if build else []
            ticks = [s["stdout"] for s in steps if s["name"] == "ticks"]
            return ticks[0] if ticks and "tick 1" in ticks[0] else None

        stored = wait_for("the slow build's first output in the store", ticking)
        # Frozen first, the daemon reads nothing more: what the plugin sends now stays
        # unacknowledged in the socket, and dies with the daemon.
        cluster.daemon.send_signal(signal.SIGSTOP)
        wait_for(
            "Buildbot to log ticks the store has not seen",
            lambda: cluster.buildbot_log("slow", "ticks").count("tick") > stored.count("tick"),
        )
        wait_for("the plugin to send to the frozen daemon", cluster.daemon_has_unread_data)
        cluster.kill_daemon()
        # The rest of the build happens while nothing listens.
        wait_for(
            "the slow build to finish in Buildbot",
            lambda: (cluster.buildbot_build("slow") or {}).get("complete"),
        )
        assert cluster.build_doc("slow")["result"] is None
        master_log = cluster.master_dir / "twistd.log"
        wait_for(
            "the plugin to log the outage",
            lambda: (
                "buildstore: daemon at" in master_log.read_text()
                and "unreachable" in master_log.read_text()
            ),
        )

        cluster.start_daemon()
        build, steps = cluster.complete_build("slow", steps=2)
        assert build["result"] == 0
        assert build["time_end"] is not None
        ticks, done = steps
        # Every line once: resent chunks were recognised by their offsets and event ids.
        assert ticks["stdout"] == "".join(f"tick {i}\n" for i in range(1, TICKS + 1))
        assert (ticks["result"], done["result"], done["stdout"]) == (0, 0, "done\n")

        # The events of the outage waited in the plugin's queue, the later ones in its backlog
        # file, and were sent after reconnecting.
        text = master_log.read_text()
        assert re.search(r"buildstore: connected to \S+; resending [1-9][0-9]* events", text)
        assert "keeping further events in the backlog" in text
        assert re.search(r"the backlog \S+ has caught up; [1-9][0-9]* events went through it", text)
        # Failures inside the plugin are logged as "buildstore: while ..." with a traceback.
        assert "buildstore: while" not in master_log.read_text()


def test_master_stopped_during_an_outage_sends_its_events_after_its_restart(cluster):
    """What the daemon never acknowledged outlives the master, in the plugin's backlog file."""
    with cluster.explained():
        cluster.kill_daemon()
        cluster.force("nocode")
        wait_for(
            "the second nocode build to finish in Buildbot",
            lambda: (cluster.buildbot_build_number("nocode", 2) or {}).get("complete"),
        )
        buildbot = cluster.buildbot_build_number("nocode", 2)
        stop_process(cluster.master)  # SIGTERM: Buildbot's own clean shutdown
        assert cluster.master.returncode == 0
        master_log = cluster.master_dir / "twistd.log"
        assert re.search(
            r"buildstore: stopping with [1-9][0-9]* events not acknowledged by \S+; they are "
            r"kept in the backlog \S+buildstore-backlog.sqlite( \([0-9]+ of them were there "
            r"already\))? and sent at the next start",
            master_log.read_text(),
        )
        backlog = cluster.master_dir / "buildstore-backlog.sqlite"
        assert backlog_rows(backlog) > 0

        cluster.start_daemon()
        cluster.run_master()

        def second_build():
            found = stored_build(cluster, "nocode", 2)
            return found if found and len(found[1]) == 2 else None

        build, (_, hello) = wait_for("the build of the outage in the store", second_build)
        assert build["result"] == 0
        assert epoch(build["time_end"]) == buildbot["complete_at"]
        assert (hello["name"], hello["result"], hello["stdout"]) == ("hello", 0, "hello\n")
        wait_for(
            "the backlog's rows to be deleted once acknowledged", lambda: backlog_rows(backlog) == 0
        )
        assert "buildstore: while" not in master_log.read_text()


def test_a_build_cut_short_by_a_killed_master_is_finished_after_its_restart(cluster):
    """Buildbot finishes such a build as RETRY when it starts again, before the plugin listens;
    the plugin's backlog file lists it as running, so the plugin reports its end."""
    with cluster.explained():
        cluster.wait_ready()
        cluster.force("slow")

        def ticking():
            docs = [b for b in cluster.export("builds") if b["builder"] == "slow"]
            second = [b for b in docs if b["number"] == 2]
            steps = cluster.steps_of(second[0]) if second else []
            return any("tick 1" in (s.get("stdout") or "") for s in steps)

        wait_for("the second slow build's first output in the store", ticking)
        cluster.master.send_signal(signal.SIGKILL)
        cluster.master.wait(10)
        backlog = cluster.master_dir / "buildstore-backlog.sqlite"
        assert backlog_rows(backlog, "running") == 1
        cluster.run_master()

        def finished():
            found = stored_build(cluster, "slow", 2)
            return found if found and all(s["result"] is not None for s in found[1][:2]) else None

        build, steps = wait_for("the cut-short build's end in the store", finished)
        buildbot = cluster.buildbot_build_number("slow", 2)
        assert buildbot["results"] == 5  # RETRY, set by Buildbot at its start
        assert build["result"] == 5
        assert epoch(build["time_end"]) == buildbot["complete_at"]
        ticks = steps[1]
        assert ticks["name"] == "ticks" and ticks["result"] == 5
        # Every line Buildbot got before the kill, once, though the plugin sent the log again.
        stored = ticks["stdout"]
        assert stored == "".join(f"tick {i}\n" for i in range(1, stored.count("tick") + 1))
        raw = cluster.buildbot_log("slow", "ticks", number=2)
        assert stored == "".join(line[1:] + "\n" for line in raw.splitlines() if line[:1] == "o")
        wait_for("the build's end to be recorded", lambda: backlog_rows(backlog, "running") == 0)
        assert "buildstore: while" not in (cluster.master_dir / "twistd.log").read_text()
