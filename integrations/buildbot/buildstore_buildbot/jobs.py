"""Ordering of the reporter's asynchronous work.

Turning a message into events may need data API reads, which complete later and in any order.
``OrderedJobs`` keeps the events of one build in the order its messages came.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from buildbot.util.deferwaiter import DeferWaiter
from twisted.internet import defer
from twisted.python import log


class OrderedJobs:
    """Runs jobs one after another per key; jobs of different keys run concurrently.

    A failing job is logged and the next one runs.
    """

    def __init__(self):
        self._queues: dict[Any, deque] = {}
        self._waiter = DeferWaiter()

    def add(self, key, fn, *args) -> None:
        queue = self._queues.get(key)
        if queue is not None:
            queue.append((fn, args))
            return
        queue = self._queues[key] = deque([(fn, args)])
        self._waiter.add(defer.ensureDeferred(self._run(key, queue)))

    async def _run(self, key, queue):
        while queue:
            fn, args = queue[0]
            try:
                await fn(*args)
            except Exception:
                log.err(None, f"buildstore: while reporting {key} ({fn.__name__})")
            queue.popleft()
        del self._queues[key]

    def wait(self) -> defer.Deferred:
        return self._waiter.wait()


def wait_at_most(reactor, d: defer.Deferred, seconds: float) -> defer.Deferred:
    """A Deferred that fires when ``d`` does or after ``seconds``, whichever comes first."""
    done = defer.Deferred()

    def fire(_=None):
        if not done.called:
            done.callback(None)

    call = reactor.callLater(seconds, fire)

    def finished(result):
        if call.active():
            call.cancel()
        fire()

    d.addBoth(finished)
    return done
