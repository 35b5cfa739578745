"""The cluster the end-to-end test runs: `buildstore serve`, a Buildbot master with the plugin, a
worker and a git repository, all on 127.0.0.1 in temporary directories, and how the test reads
what they did (Buildbot's REST API, `buildstore export`, the plugin's backlog file).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BIN = os.environ.get("BUILDSTORE_BIN")
MASTER_ID = "e2e"
WAIT = 60  # seconds: generous upper bound for any one condition
TICKS = 16  # at 0.5 s each: longer than the worker buffers output (5 s)

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ana Lima",
    "GIT_AUTHOR_EMAIL": "ana@example.org",
    "GIT_COMMITTER_NAME": "Ana Lima",
    "GIT_COMMITTER_EMAIL": "ana@example.org",
    "GIT_CONFIG_NOSYSTEM": "1",
}

MASTER_CFG = """\
from buildbot.plugins import schedulers, steps, util, worker
from buildstore_buildbot import BuildstoreReporter

REPO = {repo!r}

c = BuildmasterConfig = {{}}
c["workers"] = [worker.Worker("w1", "pass")]
c["protocols"] = {{"pb": {{"port": "tcp:{pb}:interface=127.0.0.1"}}}}
c["buildbotNetUsageData"] = None
c["title"] = "buildstore e2e"
c["buildbotURL"] = "http://127.0.0.1:{www}/"
c["www"] = {{"port": "tcp:{www}:interface=127.0.0.1", "plugins": {{}}}}
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}


def shell(name, script):
    return steps.ShellCommand(name=name, command=["sh", "-c", script])


factories = {{
    "checkout": [
        steps.Git(name="git", repourl=REPO, mode="full", method="clobber"),
        shell("show", "git log -1 --format=%H"),
    ],
    "failing": [
        shell("prepare", "echo ready"),
        shell("test", "echo out-line; echo err-line >&2; exit 3"),
    ],
    "nocode": [shell("hello", "echo hello")],
    "slow": [
        shell("ticks", "for i in $(seq 1 {ticks}); do echo tick $i; sleep 0.5; done"),
        shell("done", "echo done"),
    ],
}}
c["builders"] = [
    util.BuilderConfig(name=name, workernames=["w1"], factory=util.BuildFactory(f))
    for name, f in factories.items()
]
c["schedulers"] = [
    schedulers.ForceScheduler(
        name="force",
        builderNames=list(factories),
        codebases=[
            util.CodebaseParameter(
                "",
                branch=util.FixedParameter(name="branch", default="main"),
                revision=util.FixedParameter(name="revision", default=""),
                repository=util.FixedParameter(name="repository", default=REPO),
                project=util.FixedParameter(name="project", default=""),
            )
        ],
    )
]
# A queue of 5 events: what an outage brings goes through the backlog file.
c["services"] = [
    BuildstoreReporter(
        "tcp://127.0.0.1:{daemon}", master_id={master_id!r}, max_backoff=1.0, queue_size=5
    )
]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found; install requirements-test.txt")
    return found


def wait_for(what: str, check, timeout: float = WAIT, interval: float = 0.25):
    """Polls ``check()`` until it returns something truthy, and returns that."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, lines: int = 120) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"({path}: {e})"


def epoch(date: dict) -> float:
    """Seconds since the epoch of an exported date, {"$date": "2026-03-12T14:07:31Z"}."""
    text = date["$date"].replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(text).timestamp()


def stop_process(proc: subprocess.Popen | None, sig=signal.SIGTERM, grace: float = 20):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class Cluster:
    """The daemon, master and worker of one test run, with helpers to drive and inspect them."""

    def __init__(self, root: Path):
        self.root = root
        self.db = root / "store.db"
        self.spool = root / "spool"
        self.daemon_err = root / "daemon.stderr"
        self.daemon_port = free_port()
        self.pb_port = free_port()
        self.www_port = free_port()
        self.master_dir = root / "master"
        self.worker_dir = root / "worker"
        self.repo = root / "repo"
        self.daemon = self.master = self.worker = None

    # -- processes --------------------------------------------------------------------------

    def start_daemon(self):
        with open(self.daemon_err, "ab") as err:
            self.daemon = subprocess.Popen(
                [
                    BIN,
                    "--store",
                    f"sqlite:{self.db}",
                    "serve",
                    "--listen",
                    f"tcp://127.0.0.1:{self.daemon_port}",
                    "--spool",
                    str(self.spool),
                    "--metrics",
                    "off",
                ],
                stdout=err,
                stderr=err,
            )

        def accepting():
            if self.daemon.poll() is not None:
                raise AssertionError(f"buildstore serve exited with {self.daemon.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.daemon_port), timeout=1),
            ):
                return True
            return False

        wait_for("the daemon to listen", accepting)

    def daemon_has_unread_data(self) -> bool:
        """Whether the daemon's end of a connection holds bytes it has not read (Linux).

        Where /proc/net/tcp is missing this can't be seen, and is taken as given.
        """
        try:
            table = Path("/proc/net/tcp").read_text().splitlines()[1:]
        except OSError:
            return True
        for row in table:
            fields = row.split()
            local_port = int(fields[1].split(":")[1], 16)
            established = fields[3] == "01"
            unread = int(fields[4].split(":")[1], 16)
            if local_port == self.daemon_port and established and unread > 0:
                return True
        return False

    def kill_daemon(self):
        self.daemon.send_signal(signal.SIGKILL)
        self.daemon.wait(10)

    def make_repo(self):
        env = {**os.environ, **GIT_ENV}
        git = [
            "git",
            "-c",
            "user.name=Ana Lima",
            "-c",
            "user.email=ana@example.org",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ]
        subprocess.run([*git, "init", "-q", "-b", "main", str(self.repo)], check=True, env=env)
        for n in range(1, 4):
            (self.repo / "README").write_text(f"revision {n}\n")
            subprocess.run([*git, "-C", str(self.repo), "add", "README"], check=True, env=env)
            subprocess.run(
                [*git, "-C", str(self.repo), "commit", "-q", "-m", f"change {n}"],
                check=True,
                env=env,
            )
        out = subprocess.run(
            [*git, "-C", str(self.repo), "rev-parse", "HEAD"],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
        self.head = out.stdout.strip()

    def start_master(self):
        subprocess.run([tool("buildbot"), "create-master", "-q", str(self.master_dir)], check=True)
        (self.master_dir / "master.cfg").write_text(
            MASTER_CFG.format(
                repo=str(self.repo),
                pb=self.pb_port,
                www=self.www_port,
                daemon=self.daemon_port,
                master_id=MASTER_ID,
                ticks=TICKS,
            )
        )
        self.run_master()

    def run_master(self):
        self.master = subprocess.Popen(
            [tool("buildbot"), "start", "--nodaemon", str(self.master_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start_worker(self):
        subprocess.run(
            [
                tool("buildbot-worker"),
                "create-worker",
                "-q",
                str(self.worker_dir),
                f"127.0.0.1:{self.pb_port}",
                "w1",
                "pass",
            ],
            check=True,
        )
        self.worker = subprocess.Popen(
            [tool("buildbot-worker"), "start", "--nodaemon", str(self.worker_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop_all(self):
        for proc in (self.worker, self.master, self.daemon):
            with contextlib.suppress(Exception):
                stop_process(proc)

    def diagnostics(self) -> str:
        return (
            f"--- master twistd.log ---\n{tail(self.master_dir / 'twistd.log')}\n"
            f"--- worker twistd.log ---\n{tail(self.worker_dir / 'twistd.log', 40)}\n"
            f"--- daemon stderr ---\n{tail(self.daemon_err, 60)}\n"
        )

    @contextlib.contextmanager
    def explained(self):
        """Prints the logs of master, worker and daemon when the block fails."""
        try:
            yield
        except BaseException:
            print(self.diagnostics())
            raise

    # -- the master's REST API --------------------------------------------------------------

    def api(self, path: str, body: dict | None = None):
        url = f"http://127.0.0.1:{self.www_port}/api/v2/{path}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            url, data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def api_or_none(self, path: str):
        try:
            return self.api(path)
        except OSError:
            return None

    def wait_ready(self):
        def builders():
            reply = self.api_or_none("builders")
            if self.master.poll() is not None:
                raise AssertionError("the master exited")
            if reply and len(reply["builders"]) == 4:
                return {b["name"]: b["builderid"] for b in reply["builders"]}
            return None

        self.builderids = wait_for("the master's REST API and its builders", builders)

        def worker_connected():
            reply = self.api_or_none("workers")
            return reply and any(w["connected_to"] for w in reply["workers"])

        wait_for("the worker to connect", worker_connected)

    def force(self, builder: str):
        reply = self.api(
            "forceschedulers/force",
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "force",
                "params": {
                    "builderid": self.builderids[builder],
                    "reason": f"e2e {builder}",
                    "username": "Ana Lima <ana@example.org>",
                },
            },
        )
        assert "error" not in reply, reply

    def buildbot_build(self, builder: str):
        reply = self.api_or_none(f"builders/{self.builderids[builder]}/builds")
        builds = (reply or {}).get("builds") or []
        return builds[0] if builds else None

    def buildbot_build_number(self, builder: str, number: int):
        reply = self.api_or_none(f"builders/{self.builderids[builder]}/builds?number={number}")
        builds = (reply or {}).get("builds") or []
        return builds[0] if builds else None

    def buildbot_log(self, builder: str, step: str, number: int | None = None) -> str:
        """The step's stdio log as Buildbot keeps it: each line with its stream's letter first."""
        if number is None:
            build = self.buildbot_build(builder)
        else:
            build = self.buildbot_build_number(builder, number)
        if build is None:
            return ""
        reply = self.api_or_none(f"builds/{build['buildid']}/steps/{step}/logs/stdio/contents")
        return "".join(chunk["content"] for chunk in (reply or {}).get("logchunks", []))

    # -- the store --------------------------------------------------------------------------

    def export(self, collection: str) -> list[dict]:
        out = subprocess.run(
            [BIN, "--store", f"sqlite:{self.db}", "export", collection],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def build_doc(self, builder: str):
        docs = [b for b in self.export("builds") if b["builder"] == builder]
        return docs[0] if docs else None

    def steps_of(self, build: dict) -> list[dict]:
        by_id = {s["_id"]: s for s in self.export("steps") if s["build"] == build["_id"]}
        return [by_id[i] for i in build["steps"] if i in by_id]

    def complete_build(self, builder: str, steps: int):
        """The build's document and its own steps, once finished with every step finished.

        Buildbot runs a ``worker_preparation`` step first in every build; it is reported like
        any other step, checked here, and left out of what is returned.
        """
        steps += 1

        def complete():
            build = self.build_doc(builder)
            if build is None or build["result"] is None or len(build["steps"]) != steps:
                return None
            found = self.steps_of(build)
            if len(found) != steps or any(s["result"] is None for s in found):
                return None
            return build, found

        build, found = wait_for(f"the complete documents of the {builder!r} build", complete)
        assert found[0]["name"] == "worker_preparation" and found[0]["result"] == 0
        return build, found[1:]


def backlog_rows(path: Path, table: str = "events") -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        db.close()


def stored_build(cluster, builder: str, number: int):
    """The build's document and its steps (``worker_preparation`` first), once it has a result."""
    docs = [
        b
        for b in cluster.export("builds")
        if b["builder"] == builder and b["number"] == number and b["result"] is not None
    ]
    return (docs[0], cluster.steps_of(docs[0])) if docs else None
