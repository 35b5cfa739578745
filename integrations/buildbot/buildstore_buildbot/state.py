"""What the reporter remembers of the builds and steps it reports: what was sent of each, so that
only changes go out, and the builds that finished, so that late messages about them find it. And
the ids of other masters' builds and steps, to skip messages about them without a read.
"""

from __future__ import annotations

from collections import OrderedDict


class BuildState:
    __slots__ = ("buildid", "builderid", "props", "seen")

    def __init__(self, buildid, builderid):
        self.buildid = buildid
        self.builderid = builderid
        # name -> the (value, source) last sent, as JSON, to send only changes
        self.props: dict[str, str] = {}
        # (name, value and source) -> times sent, to tell A, B, A from a replay
        self.seen: dict[tuple[str, str], int] = {}


class StepState:
    __slots__ = (
        "stepid",
        "buildid",
        "number",
        "name",
        "started",
        "finished",
        "logid",
        "next_line",
        "offsets",
    )

    def __init__(self, stepid, buildid, number, name):
        self.stepid = stepid
        self.buildid = buildid
        self.number = number
        self.name = name
        self.started = False
        # step_finished sent: a build found complete finishes the steps it started, not twice
        self.finished = False
        # the one log sent (see takes_log): the lines read so far and the bytes sent per channel
        self.logid: int | None = None
        self.next_line = 0
        self.offsets: dict[str, int] = {}

    def sent_text(self) -> bool:
        return any(self.offsets.values())


class FinishedBuilds:
    """The last ``kept`` builds that finished, each with its state and its steps' at the end.

    Messages about a finished build must not bring its state back into ``_builds`` and
    ``_steps``: nothing would free it again. With the state kept here, what still can be done
    for them is done (a property set late, log text not yet sent) and memory stays bounded.
    """

    def __init__(self, kept: int):
        self.kept = kept
        self._builds: OrderedDict[int, tuple[BuildState, list[StepState]]] = OrderedDict()
        self._steps: dict[int, StepState] = {}

    def add(self, buildid: int, build: BuildState, steps: list[StepState]) -> None:
        while len(self._builds) >= self.kept:
            _, (_, old_steps) = self._builds.popitem(last=False)
            for step in old_steps:
                self._steps.pop(step.stepid, None)
        self._builds[buildid] = (build, steps)
        for step in steps:
            self._steps[step.stepid] = step

    def __contains__(self, buildid) -> bool:
        return buildid in self._builds

    def build(self, buildid) -> BuildState | None:
        entry = self._builds.get(buildid)
        return entry[0] if entry is not None else None

    def step(self, stepid) -> StepState | None:
        return self._steps.get(stepid)


class RecentIds:
    """The last ``kept`` ids added: a set that forgets its oldest ids rather than grow."""

    def __init__(self, kept: int):
        self.kept = kept
        self._ids: OrderedDict[int, None] = OrderedDict()  # oldest first

    def add(self, id_) -> None:
        if id_ in self._ids:
            return
        while len(self._ids) >= self.kept:
            self._ids.popitem(last=False)
        self._ids[id_] = None

    def __contains__(self, id_) -> bool:
        return id_ in self._ids

    def __len__(self) -> int:
        return len(self._ids)


def takes_log(state: StepState, logdict: dict) -> bool:
    """Whether to send ``logdict``, a stdio-type log of the step (which may make it the one).

    A step's output goes out as one log: its channels are placed by byte offset, so the text of
    a second log would collide with the first's. That log is the one named ``stdio``, where
    Buildbot's shell steps write, but a step may have other stdio-type logs, created before it or
    instead of it. Until a ``stdio`` log shows up, the first one seen stands in. It gives way to
    ``stdio`` only while none of its text was sent: after that the daemon holds its text at those
    offsets, so it is kept, and ``stdio`` is not sent.
    """
    logid = logdict["logid"]
    if state.logid == logid:
        return True
    if state.logid is None or (logdict.get("name") == "stdio" and not state.sent_text()):
        state.logid, state.next_line, state.offsets = logid, 0, {}
        return True
    return False
