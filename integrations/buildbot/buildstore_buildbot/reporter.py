"""``BuildstoreReporter``: the Buildbot service that reports a master's builds to buildstore.

It consumes the master's message queue, reads from the data API what the messages don't carry
(build properties, source stamps, log text), turns both into v1 events with ``events`` and hands
them to a ``BuildstoreClient``. The builders' events are made by ``builders.BuilderReports``,
the log text's by ``logs.LogReports``.

Ordering matters to the daemon: a build's ``build_started`` must come before its steps, a step's
``step_started`` before its log chunks, and log chunks of one channel in order. Message handling
involves data API reads, which take time, so the work for one build runs strictly one job after
another (``jobs.OrderedJobs``), while different builds proceed side by side.

Every message callback returns at once and never raises; failures are logged and the master goes
on.
"""

from __future__ import annotations

import os

from buildbot import config
from buildbot.util import service
from buildbot.util.twisted import async_to_deferred
from twisted.internet import defer
from twisted.python import log

from buildstore_buildbot import events
from buildstore_buildbot.backlog import BacklogError
from buildstore_buildbot.backlog import open_backlog
from buildstore_buildbot.builders import BuilderReports
from buildstore_buildbot.client import BuildstoreClient
from buildstore_buildbot.connection import parse_address
from buildstore_buildbot.encoding import well_formed
from buildstore_buildbot.jobs import OrderedJobs
from buildstore_buildbot.jobs import wait_at_most
from buildstore_buildbot.logs import LogReports
from buildstore_buildbot.state import BuildState
from buildstore_buildbot.state import FinishedBuilds
from buildstore_buildbot.state import RecentIds
from buildstore_buildbot.state import StepState

# The backlog file's name, in the master's directory.
DEFAULT_BACKLOG = "buildstore-backlog.sqlite"

# The 3-part filters match every event of their kind (new, started, finished, append, ...).
BUILDER_FILTER = ("builders", None, None)
BUILD_FILTER = ("builds", None, None)
STEP_FILTER = ("steps", None, None)
LOG_FILTER = ("logs", None, None)
PROPERTIES_FILTER = ("builds", None, "properties", "update")
CHANGE_FILTER = ("changes", None, "new")
WORKER_FILTER = ("workers", None, None)

# Builds of other masters (multi-master with a shared mq) are remembered to skip them cheaply, and
# so are their steps: a step's log messages would otherwise each cost a read to find its build.
FOREIGN_BUILDS_KEPT = 10000
FOREIGN_STEPS_KEPT = 10000

# Builds this service saw finish, with their steps, are remembered to recognise messages about them
# that come later (a log append is announced without waiting for it). Those come moments after the
# build's end, not hundreds of builds later; the bound keeps the memory from growing with each.
FINISHED_BUILDS_KEPT = 500


def _prop_key(value, source) -> str:
    return events.stable_text([value, source])


class BuildstoreReporter(BuilderReports, LogReports, service.BuildbotService):
    """Reports builders, builds, steps, logs and properties to ``buildstore serve``.

    ``address`` is ``tcp://HOST:PORT`` or ``unix:/PATH``; ``master_id`` names this master in
    every document. ``token`` (which may be a ``util.Secret``) is sent first when the daemon
    requires one. ``queue_size`` and ``queue_bytes`` bound the events held in memory while the
    daemon is unreachable, in number and in bytes; further events go to the ``backlog`` file (in
    the master's directory unless absolute; None for none), up to ``backlog_bytes``.
    """

    name = "BuildstoreReporter"
    secrets = ["token"]
    client_class = BuildstoreClient

    def checkConfig(
        self,
        address,
        master_id=None,
        token=None,
        queue_size=10000,
        max_backoff=30.0,
        stop_timeout=5.0,
        queue_bytes=64 << 20,
        backlog=DEFAULT_BACKLOG,
        backlog_bytes=1 << 30,
    ):
        try:
            parse_address(address)
        except (TypeError, ValueError, AttributeError) as e:
            config.error(f"BuildstoreReporter: address: {e}")
        if isinstance(master_id, bool) or not isinstance(master_id, (str, int)):
            config.error("BuildstoreReporter: master_id must be a string or an integer")
        elif isinstance(master_id, str) and (master_id in ("", ".", "..") or "/" in master_id):
            config.error(
                "BuildstoreReporter: master_id must be non-empty, contain no '/' and be "
                "neither '.' nor '..'"
            )
        elif isinstance(master_id, str) and len(well_formed(master_id).encode("utf-8")) > 256:
            # The daemon would refuse every event. Measured as sent: a lone surrogate goes as
            # U+FFFD, three bytes.
            config.error("BuildstoreReporter: master_id must be at most 256 bytes")
        elif isinstance(master_id, int) and not events.fits_64_bits(master_id):
            config.error("BuildstoreReporter: master_id must be a 64-bit integer")
        if not isinstance(queue_size, int) or queue_size < 1:
            config.error("BuildstoreReporter: queue_size must be a positive integer")
        if isinstance(queue_bytes, bool) or not isinstance(queue_bytes, int) or queue_bytes < 1:
            config.error("BuildstoreReporter: queue_bytes must be a positive integer")
        if not isinstance(max_backoff, (int, float)) or max_backoff <= 0:
            config.error("BuildstoreReporter: max_backoff must be a positive number of seconds")
        if (
            isinstance(stop_timeout, bool)
            or not isinstance(stop_timeout, (int, float))
            or not 0 <= stop_timeout < float("inf")
        ):
            config.error("BuildstoreReporter: stop_timeout must be a number of seconds, 0 or more")
        if backlog is not None and (not isinstance(backlog, str) or not backlog):
            config.error("BuildstoreReporter: backlog must be a file name or None")
        if (
            isinstance(backlog_bytes, bool)
            or not isinstance(backlog_bytes, int)
            or backlog_bytes < 1
        ):
            config.error("BuildstoreReporter: backlog_bytes must be a positive integer")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.client = None
        self.master_id = None
        self._client_args = None
        self._stop_timeout = 5.0
        self._backlog_file = DEFAULT_BACKLOG
        self._backlog_bytes = 1 << 30
        self._backlog = None
        self._consumers = []
        self._jobs = OrderedJobs()
        self._reset_state()

    def _reset_state(self):
        self._builds: dict[int, BuildState] = {}
        self._foreign = RecentIds(FOREIGN_BUILDS_KEPT)
        self._foreign_steps = RecentIds(FOREIGN_STEPS_KEPT)
        self._steps: dict[int, StepState] = {}
        self._finished = FinishedBuilds(FINISHED_BUILDS_KEPT)
        self._reset_builders()

    @defer.inlineCallbacks
    def reconfigService(
        self,
        address,
        master_id=None,
        token=None,
        queue_size=10000,
        max_backoff=30.0,
        stop_timeout=5.0,
        queue_bytes=64 << 20,
        backlog=DEFAULT_BACKLOG,
        backlog_bytes=1 << 30,
    ):
        self.master_id = master_id
        self._stop_timeout = stop_timeout
        self._backlog_bytes = backlog_bytes
        if self._backlog is not None:
            self._backlog.max_bytes = backlog_bytes
            if backlog != self._backlog_file:
                log.msg(f"buildstore: the backlog stays {self._backlog.path} until the next start")
        self._backlog_file = backlog
        client_args = (address, token, max_backoff)
        if self.client is not None and client_args == self._client_args:
            self.client.set_queue_size(queue_size)
            self.client.set_queue_bytes(queue_bytes)
            return
        old = self.client
        self.client = self.client_class(
            address,
            token=token,
            queue_size=queue_size,
            queue_bytes=queue_bytes,
            reactor=self.master.reactor,
            max_backoff=max_backoff,
        )
        self._client_args = client_args
        if old is not None:
            # Events not yet acknowledged by the old address go to the new one, and so does the
            # backlog: its waiting events follow those.
            self.client.take_queue(old)
            if self._backlog is not None:
                self.client.set_backlog(self._backlog)
            yield old.stop(0)
        if self.running:
            self.client.start()

    def reconfigServiceWithSibling(self, sibling):
        # Called on every reconfiguration of the master, also when this service's own arguments
        # stay the same (then the base class does nothing).
        if self.running:
            self._builders_reconfigured()
        return super().reconfigServiceWithSibling(sibling)

    @async_to_deferred
    async def startService(self):
        await super().startService()
        self._boot_ids = events.BuilderEventIds(f"{int(self.master.reactor.seconds() * 1000):x}")
        if self._backlog_file is not None:
            path = os.path.join(self.master.basedir, self._backlog_file_name())
            self._backlog = open_backlog(path, self._backlog_bytes, log.msg)
            self.client.set_backlog(self._backlog)
        self.client.start()
        self._recover_running_builds()
        handlers = [
            (BUILDER_FILTER, self._on_builder),
            (BUILD_FILTER, self._on_build),
            (STEP_FILTER, self._on_step),
            (LOG_FILTER, self._on_log),
            (PROPERTIES_FILTER, self._on_properties),
            (CHANGE_FILTER, self._on_change),
            (WORKER_FILTER, self._on_worker),
        ]
        for filter_, handler in handlers:
            qref = await self.master.mq.startConsuming(self._guarded(handler), filter_)
            self._consumers.append(qref)
        # Builders announced before this service subscribed are read from the data API.
        self._jobs.add(("startup",), self._announce_builders)

    def _backlog_file_name(self) -> str:
        # Services of one master given names of their own (several daemons) must not share the
        # default file: each would send the other's events.
        if self._backlog_file != DEFAULT_BACKLOG or self.name == type(self).name:
            return self._backlog_file
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name)
        return f"buildstore-backlog-{safe}.sqlite"

    @async_to_deferred
    async def stopService(self):
        for qref in self._consumers:
            await defer.maybeDeferred(qref.stopConsuming)
        self._consumers = []
        reactor = self.master.reactor
        # One stop_timeout for the whole stop. A job still reading then sends its events to a
        # closed client; a build it was reporting, if already reported as started, is listed in
        # the backlog file as running, and reported again at the next start.
        deadline = reactor.seconds() + self._stop_timeout
        await wait_at_most(reactor, self._jobs.wait(), self._stop_timeout)
        await self.client.stop(max(0.0, deadline - reactor.seconds()))
        if self._backlog is not None:
            self._backlog.close()
            self._backlog = None
        self._reset_state()
        await super().stopService()

    def wait_idle(self) -> defer.Deferred:
        """Fires once every message received so far has been turned into events."""
        return self._jobs.wait()

    # -- message callbacks: quick, synchronous, never raising ------------------------------

    def _guarded(self, handler):
        def callback(key, message):
            try:
                handler(key, message)
            except Exception:
                log.err(None, f"buildstore: while handling message {key}")

        return callback

    def _send(self, event: dict, on_safe=None) -> None:
        self.client.send(event, on_safe)

    def _ours(self, masterid) -> bool:
        return masterid == self.master.masterid

    def _on_build(self, key, build):
        if not self._ours(build.get("masterid")):
            if build.get("masterid") is not None:
                # Known as another master's from now on: its steps' messages keep no state.
                self._foreign.add(build["buildid"])
            return
        buildid, builderid, what = build["buildid"], build["builderid"], key[2]
        if what == "new":
            self._running.setdefault(builderid, set()).add(buildid)
            self._jobs.add(("build", buildid), self._ensure_build, buildid, build)
        elif what == "finished":
            self._running.get(builderid, set()).discard(buildid)
            self._jobs.add(("build", buildid), self._build_finished, build)
        else:
            return
        self._jobs.add(("builder", builderid), self._refresh_state, builderid)

    def _on_step(self, key, step):
        buildid, stepid, what = step["buildid"], step["stepid"], key[-1]
        if buildid in self._foreign:
            return
        if buildid in self._finished:
            self._step_after_build(step, what)
            return
        known = self._steps.get(stepid)
        if known is None:
            self._steps[stepid] = StepState(stepid, buildid, step["number"], step["name"])
        else:
            known.number, known.name = step["number"], step["name"]
        if what in ("started", "finished"):
            self._jobs.add(("build", buildid), self._step_changed, step, what)
        elif known is None and buildid not in self._builds:
            # A "new" or "updated" message sends nothing. Of a build not (yet) reported, the
            # entry is kept only if the jobs before this one report the build: one that ended
            # unseen would get no message to free it.
            self._jobs.add(("build", buildid), self._forget_unreported_step, stepid, buildid)

    def _on_log(self, key, logdict):
        if logdict.get("type") != "s":
            return  # only stdio-type logs carry the stdout/stderr/header channels
        stepid = logdict["stepid"]
        if stepid in self._foreign_steps:
            return
        step = self._steps.get(stepid) or self._finished.step(stepid)
        if step is None:
            self._jobs.add(("unknown step",), self._log_of_unknown_step, logdict)
        else:
            self._jobs.add(("build", step.buildid), self._log_changed, logdict)

    def _on_properties(self, key, props):
        buildid = int(key[1])
        if buildid not in self._foreign:
            self._jobs.add(("build", buildid), self._properties_changed, buildid, props)

    def _on_change(self, key, change):
        event = events.commit_event(self.master_id, change)
        if event is not None:
            self._send(event)

    # -- builds -----------------------------------------------------------------------------

    async def _ensure_build(self, buildid, build=None) -> BuildState | None:
        """The build's state, after sending its ``build_started`` if that wasn't done yet.

        None for a build of another master, one the data API doesn't know, or one whose
        ``build_finished`` was sent: state made for it again would never be freed.

        Called only from a job of the build's key. A build read here that is already complete
        gets its finish queued on that key, to run once that job sent what its message carries.
        """
        state = self._builds.get(buildid)
        if state is not None:
            return state
        if buildid in self._foreign or buildid in self._finished:
            return None
        data = self.master.data
        read = build is None
        if read:
            build = await data.get(("builds", buildid))
            if build is None:
                log.msg(f"buildstore: build {buildid} not found in the data API; not reported")
                return None
        if not self._ours(build.get("masterid")):
            self._foreign.add(buildid)
            return None

        builder = await data.get(("builders", build["builderid"]))
        worker = await data.get(("workers", build["workerid"])) if build.get("workerid") else None
        props = await data.get(("builds", buildid, "properties")) or {}
        sourcestamps, reason = [], None
        request = await data.get(("buildrequests", build["buildrequestid"]))
        if request is not None:
            buildset = await data.get(("buildsets", request["buildsetid"]))
            if buildset is not None:
                sourcestamps = buildset.get("sourcestamps") or []
                reason = buildset.get("reason")
        changes = await data.get(("builds", buildid, "changes")) or []

        if buildid in self._builds:  # reported meanwhile by an earlier job of this build
            return self._builds[buildid]
        state = BuildState(buildid, build["builderid"])
        event = events.build_started(
            self.master_id,
            build,
            builder["name"] if builder else str(build["builderid"]),
            worker_name=worker["name"] if worker else None,
            sourcestamps=sourcestamps,
            reason=reason,
            properties=props,
            changes=changes,
        )
        for name, prop in event["properties"].items():
            key = _prop_key(prop["value"], prop["source"])
            state.props[name] = key
            state.seen[(name, key)] = 1
        self._builds[buildid] = state
        self._send(event)
        self._record("build_started", buildid)
        complete = build.get("complete") or build.get("complete_at") is not None
        if not complete and buildid not in self._running.get(build["builderid"], ()):
            # Started before this service listened (or reported again after a crash): its
            # builder is building all the same.
            self._running.setdefault(build["builderid"], set()).add(buildid)
            self._jobs.add(("builder", build["builderid"]), self._refresh_state, build["builderid"])
        if read and complete:
            # A late message about a build that ended before this service started, or that
            # _finished no longer holds: no "finished" message will come to free this state.
            self._jobs.add(("build", buildid), self._finish_complete_build, build)
        return state

    async def _build_finished(self, build):
        if await self._ensure_build(build["buildid"], build) is not None:
            self._finish(build)

    def _finish(self, build):
        """Sends ``build_finished`` and moves the build's state, steps included, to _finished."""
        buildid = build["buildid"]
        state = self._builds.pop(buildid, None)
        if state is None:  # finished by an earlier job
            return
        # Its "finished" message took it off the builder's running builds already, unless the
        # build was first read meanwhile and put back from what was read before it ended.
        running = self._running.get(state.builderid, set())
        if buildid in running:
            running.discard(buildid)
            self._jobs.add(("builder", state.builderid), self._refresh_state, state.builderid)
        # Struck off the running builds only once the daemon or the backlog file has the end: a
        # master killed before that reports the build again at its next start.
        self._send(
            events.build_finished(self.master_id, build),
            lambda: self._record("build_finished", buildid),
        )
        steps = [s for s in self._steps.values() if s.buildid == buildid]
        for step in steps:
            del self._steps[step.stepid]
        # Messages about the build can still come; they find its state here, for a while.
        self._finished.add(buildid, state, steps)

    async def _finish_complete_build(self, build):
        """Finishes a build that a message found already complete, once that message was handled.

        No "finished" message will come for it to free its state. It was started, and what the
        message carries sent, as the daemon may not have it (it ended before this service
        started). If the daemon has it (_finished forgot it), sending it again is harmless: event
        ids are made of Buildbot's ids, and log chunks' of their byte ranges, so ``build_started``,
        the steps' events, the log text and ``build_finished`` come with ids the daemon already
        applied, and it skips them. A step this service started whose own "finished" message it
        didn't handle is finished as that message would have, if Buildbot finished it (the steps
        of a build cut short by a master's stop may not be).
        """
        buildid = build["buildid"]
        if buildid not in self._builds:  # its "finished" message came meanwhile
            return
        try:
            for state in [s for s in self._steps.values() if s.buildid == buildid]:
                if not state.started or state.finished:
                    continue
                step = await self.master.data.get(("steps", state.stepid))
                if step is not None and step.get("complete"):
                    await self._finish_step(state, step)
        finally:
            # Even if a step read fails: left in _builds, the state would never be freed.
            self._finish(build)

    def _record(self, what: str, buildid: int):
        """Notes in the backlog file that the build was reported as started, or as finished."""
        if self._backlog is None:
            return
        try:
            getattr(self._backlog, what)(buildid)
        except BacklogError as e:
            log.msg(
                f"buildstore: {e}; build {buildid} is not recorded as {what.removeprefix('build_')}"
            )

    def _recover_running_builds(self):
        if self._backlog is None:
            return
        try:
            running = self._backlog.running_builds()
        except BacklogError as e:
            log.msg(f"buildstore: {e}; builds cut short by a crash stay unfinished")
            return
        if running:
            shown = ", ".join(map(str, running[:20])) + (", ..." if len(running) > 20 else "")
            log.msg(
                f"buildstore: {len(running)} builds were reported as started and not as "
                f"finished when the plugin last stopped; reporting them again: {shown}"
            )
        for buildid in running:
            self._jobs.add(("build", buildid), self._recover_build, buildid)

    async def _recover_build(self, buildid):
        """Reports again, from Buildbot's database, a build the plugin had reported as started
        and not as finished when it last stopped.

        Either the master was killed or crashed during the build, and Buildbot, starting again,
        finished it and its steps (as RETRY) before this service listened; or this service was
        stopped and started again while the build ran on. Events the daemon has come with the
        ids it already applied, and log text with offsets it has, so it skips them; what it
        lacks is applied. A complete build is finished once this job is done (``_ensure_build``
        queues that).
        """
        if await self._ensure_build(buildid) is None:  # gone, or no longer this master's
            self._record("build_finished", buildid)
            return
        # The daemon skips the build_started above, and with it the properties set since the
        # first one (a got_revision, say). Each is sent as it is now, under an id of this start,
        # so that it is applied even where an event with that value was (A, B, A).
        props = await self.master.data.get(("builds", buildid, "properties")) or {}
        for name, pair in props.items():
            value, source = events.split_property(pair)
            event = events.property_event(self.master_id, buildid, name, value, source)
            event["event_id"] += f"-again-{self._boot_ids.boot}"
            self._send(event)
        for step in await self.master.data.get(("builds", buildid, "steps")) or []:
            if step.get("started_at") is None:
                continue
            step_state = self._step_state(step)
            self._ensure_step_started(step_state, step)
            if step.get("complete") and not step_state.finished:
                await self._finish_step(step_state, step)

    async def _properties_changed(self, buildid, props):
        # A property set after the build's end still counts (a got_revision correcting the
        # changeset links the build to its commit), so it is sent; its build stays finished.
        state = self._finished.build(buildid) or await self._ensure_build(buildid)
        if state is None:
            return
        for name, pair in props.items():
            value, source = events.split_property(pair)
            # As in build_started, whose names and values were made storable.
            name = events.property_name(name)
            key = _prop_key(events.storable(value), source)
            if state.props.get(name) == key:
                continue
            repeat = state.seen.get((name, key), 0)
            state.seen[(name, key)] = repeat + 1
            state.props[name] = key
            event = events.property_event(self.master_id, buildid, name, value, source, repeat)
            # `repeat` counts from nothing again at each start of the service: the start's token
            # keeps an id from passing for one of an earlier start (A, B, A, restart, B), which
            # the daemon would skip as already applied.
            event["event_id"] += f"-{self._boot_ids.boot}"
            self._send(event)

    # -- steps and logs ---------------------------------------------------------------------

    async def _step_changed(self, step, what):
        build = await self._ensure_build(step["buildid"])
        if build is None:
            self._drop_step(step["stepid"], step["buildid"])
            return
        state = self._step_state(step)
        self._ensure_step_started(state, step)
        if what == "finished":
            await self._finish_step(state, step)

    def _step_state(self, step: dict) -> StepState:
        """The step's state, made from the data API's ``step`` if there is none yet."""
        stepid = step["stepid"]
        return self._steps.setdefault(
            stepid, StepState(stepid, step["buildid"], step["number"], step["name"])
        )

    async def _finish_step(self, state: StepState, step: dict):
        """Sends the rest of the step's log, then ``step_finished``.

        Log appends are announced without waiting for them, so the last ones may come after the
        step finished: what is left is read now, to send the text first. The step finishes even
        if that read fails for good.
        """
        await self._catch_up_log(state)
        state.finished = True
        self._send(events.step_finished(self.master_id, step))

    async def _forget_unreported_step(self, stepid, buildid):
        state = self._steps.get(stepid)
        if buildid not in self._builds and state is not None and not state.started:
            del self._steps[stepid]

    def _drop_step(self, stepid, buildid):
        """Forgets a step whose build is not reported; one of another master's is remembered as
        such, so that its further log messages are skipped without reading the step again."""
        self._steps.pop(stepid, None)
        if buildid in self._foreign:
            self._foreign_steps.add(stepid)

    def _ensure_step_started(self, state: StepState, step: dict):
        if not state.started:
            state.started = True
            self._send(events.step_started(self.master_id, step))

    def _step_after_build(self, step: dict, what: str):
        # Buildbot ends a build's steps before the build: only a repeated message could start or
        # finish one now. That is logged, not reported, and no state is made: none would be freed.
        if what in ("started", "finished"):
            log.msg(
                f"buildstore: step {step['number']} {step['name']!r} (stepid {step['stepid']}) "
                f"of build {step['buildid']} {what} after the build finished; not reported"
            )
