"""Steps' stdio logs as ``log`` events, read from the data API as their appends are announced.

Buildbot announces a log append without its text, and without waiting for it, so the text is read
from the line the step's state says was sent up to the count the message gives. At a step's end
the rest of its log is read, trying again on failure, so that its text goes out before
``step_finished``; text announced after its build's end goes out from the state kept for it.
"""

from __future__ import annotations

from twisted.internet import task
from twisted.python import log

from buildstore_buildbot import events
from buildstore_buildbot.state import StepState
from buildstore_buildbot.state import takes_log

# Seconds to wait before each further try to read the rest of a finished step's log (3 tries in
# all). A failed read (a locked or busy database) often succeeds a moment later.
LOG_CATCH_UP_PAUSES = (0.5, 1.0)
# Most log lines read from Buildbot at once.
READ_LINES = 10_000


def _log_progress(state: StepState) -> str:
    if state.logid is None:
        return "nothing of its log was sent"
    channels = ", ".join(f"{ch} {n} bytes" for ch, n in sorted(state.offsets.items()) if n)
    return (
        f"the first {state.next_line} lines of its log {state.logid} were sent "
        f"({channels or 'no text'})"
    )


class LogReports:
    """The log half of ``BuildstoreReporter``, mixed into it.

    Uses the reporter's ``master``, ``master_id``, ``_steps``, ``_foreign``, ``_foreign_steps``,
    ``_finished``, ``_jobs``, ``_send``, ``_ensure_build``, ``_drop_step``, ``_step_state`` and
    ``_ensure_step_started``.
    """

    async def _log_of_unknown_step(self, logdict):
        # Only when this service started in the middle of a step, the step's build finished, or
        # it is another master's step not yet known as such.
        stepid = logdict["stepid"]
        if stepid in self._foreign_steps:  # found to be one by an earlier job
            return
        if stepid not in self._steps:
            step = await self.master.data.get(("steps", stepid))
            if step is None:
                return
            if step["buildid"] in self._foreign:
                self._foreign_steps.add(stepid)
                return
            if step["buildid"] in self._finished:
                self._jobs.add(("build", step["buildid"]), self._log_after_build, logdict, step)
                return
            # A step message during the read may have made its state, and sent text with it:
            # replacing that state would send the log again from its start, out of step.
            self._step_state(step)
        self._jobs.add(("build", self._steps[stepid].buildid), self._log_changed, logdict)

    async def _log_changed(self, logdict):
        state = self._steps.get(logdict["stepid"])
        if state is None:
            await self._log_after_build(logdict)
            return
        build = await self._ensure_build(state.buildid)
        if build is None:
            self._drop_step(state.stepid, state.buildid)
            return
        if not takes_log(state, logdict):
            return
        if not state.started:
            step = await self.master.data.get(("steps", state.stepid))
            if step is None:
                return
            self._ensure_step_started(state, step)
        await self._read_log(state, logdict.get("num_lines"))

    async def _log_after_build(self, logdict, step=None):
        """Log text announced after the end of its step's build, sent from the state it had then.

        Usually all of it went out before ``step_finished``, as the step's end reads its log to
        the end. What a failed read left behind goes out now: the daemon still appends text to a
        finished step. Only a step never reported as started can't take it.
        """
        state = self._finished.step(logdict["stepid"])
        if state is None:
            if step is not None and logdict.get("num_lines"):
                self._log_not_sent(step["number"], step["name"], step["stepid"], step["buildid"])
            return
        if not takes_log(state, logdict) or logdict.get("num_lines", 0) <= state.next_line:
            return
        if not state.started:
            self._log_not_sent(state.number, state.name, state.stepid, state.buildid)
            return
        before = sum(state.offsets.values())
        await self._read_log(state, logdict.get("num_lines"))
        sent = sum(state.offsets.values()) - before
        if sent:
            log.msg(
                f"buildstore: {sent} bytes of the log of step {state.number} {state.name!r} "
                f"(stepid {state.stepid}) came after build {state.buildid} finished; sent"
            )

    def _log_not_sent(self, number, name, stepid, buildid):
        log.msg(
            f"buildstore: log text of step {number} {name!r} (stepid {stepid}) came after build "
            f"{buildid} finished, and the step was never reported as started; the daemon would "
            "reject it, so it is not sent"
        )

    async def _catch_up_log(self, state: StepState):
        """Reads and sends what is left of the log of a finished step, trying again on failure.

        A read that keeps failing costs the rest of the log, not the step: the failure is logged
        and the caller still sends ``step_finished``, or the build's steps would stay open.
        """
        tries = len(LOG_CATCH_UP_PAUSES) + 1
        for attempt in range(tries):
            try:
                await self._read_rest_of_log(state)
                return
            except Exception as e:
                if attempt == tries - 1:
                    log.err(
                        None,
                        f"buildstore: cannot read the rest of the log of step {state.number} "
                        f"{state.name!r} (stepid {state.stepid}) of build {state.buildid} after "
                        f"{tries} tries; {_log_progress(state)}; the rest is lost",
                    )
                    return
                pause = LOG_CATCH_UP_PAUSES[attempt]
                log.msg(
                    f"buildstore: reading the log of step {state.number} {state.name!r} "
                    f"(stepid {state.stepid}) failed ({e!r}); trying again in {pause:g} s"
                )
            # _read_log advances only after a successful read, so a retry resumes where it was.
            await task.deferLater(self.master.reactor, pause, lambda: None)

    async def _read_rest_of_log(self, state: StepState):
        # While nothing was sent, the step's logs are listed: its stdio log may never have been
        # announced to this service (started in the middle of the step), yet it is the one.
        if state.logid is None or not state.sent_text():
            logs = await self.master.data.get(("steps", state.stepid, "logs")) or []
            for entry in logs:
                if entry.get("type") == "s":
                    takes_log(state, entry)
            if state.logid is None:
                return
        await self._read_log(state, None)

    async def _read_log(self, state: StepState, num_lines):
        logid = state.logid
        if num_lines is None:
            logdict = await self.master.data.get(("logs", logid))
            if logdict is None:
                return
            num_lines = logdict["num_lines"]
        # A slice at a time: a whole log (a step caught up after a crash, a service started in
        # the middle of a long step) would be held in memory several times over, and turned
        # into events in one go on the reactor's thread.
        while state.next_line < num_lines:
            first = state.next_line
            last = min(num_lines, first + READ_LINES)
            contents = await self.master.data.get(
                ("logs", logid, "contents"), offset=first, limit=last - first
            )
            state.next_line = last
            if not contents or not contents.get("content"):
                continue
            for channel, text in events.split_stdio(contents["content"]).items():
                chunks, state.offsets[channel] = events.log_events(
                    self.master_id,
                    state.buildid,
                    state.number,
                    logid,
                    channel,
                    text,
                    state.offsets.get(channel, 0),
                )
                for event in chunks:
                    self._send(event)
