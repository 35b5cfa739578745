"""The connection to ``buildstore serve``: a bounded queue of unacknowledged events.

Events wait in memory until the daemon acknowledges them. The daemon answers every line with one
reply, in order (``{"ack": ID}`` or ``{"error": ..., "line": N}``), so the oldest line in flight
is always the one a reply is about. After a lost connection everything not yet acknowledged is
sent again; the daemon skips what it already had by ``event_id``.

Network I/O is Twisted's, and nothing raises into the caller. When the daemon is unreachable, a
line goes to the log and the master carries on. Once the queue is full, events go to the backlog
file, if there is one (see ``backlog.py``), and are dropped with a log line past its bound too.
"""

from __future__ import annotations

import json
from collections import deque

from twisted.internet import defer
from twisted.python import log

from buildstore_buildbot.backlog import Backlog
from buildstore_buildbot.backlog import BacklogError
from buildstore_buildbot.connection import DaemonFactory
from buildstore_buildbot.connection import DaemonProtocol
from buildstore_buildbot.connection import make_endpoint
from buildstore_buildbot.encoding import encode_event


def _summary(line: bytes, limit: int = 400) -> str:
    text = line.decode("utf-8", "replace").rstrip("\n")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


class _Pending:
    # ``seq`` is the event's row in the backlog, for an event taken from there; ``on_safe`` what
    # to run once it is answered, in order: the sender's, and those of events spilled behind it.
    # A list, not callbacks wrapped in one another: hours of an outage may put thousands behind
    # one event, and nested they would overflow the stack when run.
    __slots__ = ("event_id", "line", "seq", "on_safe")

    def __init__(self, event_id: str | None, line: bytes, seq: int | None = None, on_safe=None):
        self.event_id = event_id
        self.line = line
        self.seq = seq
        self.on_safe = [] if on_safe is None else [on_safe]

    def safe(self):
        """Runs what waited for this event to be answered."""
        callbacks, self.on_safe = self.on_safe, []
        for on_safe in callbacks:
            _run_on_safe(on_safe)


def _run_on_safe(on_safe):
    if on_safe is None:
        return
    try:
        on_safe()
    except Exception:
        log.err(None, "buildstore: while noting that an event is safe")


class BuildstoreClient:
    """Sends events to the daemon and keeps each until it is acknowledged.

    ``queue_size`` bounds the events held (in flight or waiting), and ``queue_bytes`` the bytes of
    their encoded lines: a log chunk can take up to a MiB, so a count alone would let an outage
    hold gigabytes in the master. ``max_in_flight`` and ``max_in_flight_bytes`` bound what is
    written ahead of the replies, so that a daemon that stops reading holds no more than that in
    the transport's buffers.
    """

    def __init__(
        self,
        address: str,
        token: str | None = None,
        queue_size: int = 10000,
        queue_bytes: int = 64 << 20,
        reactor=None,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        reply_timeout: float = 60.0,
        max_in_flight: int = 500,
        max_in_flight_bytes: int = 4 << 20,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.address = address
        self.endpoint = make_endpoint(reactor, address)
        self.token = token
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.reply_timeout = reply_timeout
        self.max_in_flight = max_in_flight
        self.max_in_flight_bytes = max_in_flight_bytes

        self.queue: deque[_Pending] = deque()
        self.backlog: Backlog | None = None
        # the bytes of the lines in ``queue``: kept up to date wherever it grows or shrinks
        self.queued_bytes = 0
        self.acknowledged = 0
        self.rejected = 0
        self.dropped = 0
        self.spilled = 0
        self.connections = 0

        self._proto: DaemonProtocol | None = None
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._awaiting_hello = False
        self._running = False
        # Stopped: what is sent now can go nowhere (its backlog is closed, its queue written out).
        self._closed = False
        self._connecting = False
        self._retry_call = None
        self._watchdog = None
        self._backoff = initial_backoff
        self._reported_unreachable = False
        self._drop_reported = 0
        self._drain_waiters: list[defer.Deferred] = []

    # -- the caller's side ------------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._closed = False
        self._connect()

    def send(self, event: dict, on_safe=None) -> bool:
        """Queue an event. Returns False, after logging why, if it had to be dropped.

        ``on_safe`` is called once the daemon has answered the event (acknowledged or rejected
        it), or once it and every event before it are answered or in the backlog file; never
        for an event dropped or lost.
        """
        if self._closed:
            self._drop(event, "the plugin has stopped")
            return False
        try:
            data = encode_event(event) + b"\n"
        except Exception as e:  # e.g. a dict key JSON can't hold, or a __str__ that raises
            log.msg(f"buildstore: cannot encode event {event.get('event_id')!r}: {e}; dropped")
            self.dropped += 1
            return False
        full = self._no_room_for(len(data))
        if self.backlog is not None and (full is not None or self.backlog.waiting):
            # While events wait in the backlog, newer ones queue behind them, there.
            return self._spill(event, data, full, on_safe)
        if full is not None:
            self._drop(event, full)
            return False
        self.queue.append(_Pending(event.get("event_id"), data, on_safe=on_safe))
        self.queued_bytes += len(data)
        self._pump()
        return True

    def set_backlog(self, backlog: Backlog | None) -> None:
        """Uses ``backlog`` for what the queue can't hold; its waiting events go first."""
        if backlog is not None and backlog.failed is not None:
            return  # given up on by the client this one replaces
        self.backlog = backlog
        self._refill()
        self._pump()

    def _no_room_for(self, size: int) -> str | None:
        """Why a line of ``size`` bytes can't be queued now, naming the bound it hits; or None."""
        if len(self.queue) >= self.queue_size:
            return f"queue full ({len(self.queue)} unacknowledged events, the queue_size bound)"
        if size > self.queue_bytes:
            # It could never be queued with others: without a backlog it is dropped like any
            # other, and the next event goes on; with one, it goes out alone (see _refill).
            return (
                f"event of {size} bytes, larger than the whole queue "
                f"(the queue_bytes bound, {self.queue_bytes})"
            )
        if self.queued_bytes + size > self.queue_bytes:
            return (
                f"queue full ({self.queued_bytes} bytes in {len(self.queue)} unacknowledged "
                f"events; {size} more would pass the queue_bytes bound, {self.queue_bytes})"
            )
        return None

    def _spill(self, event: dict, data: bytes, full: str | None, on_safe) -> bool:
        backlog = self.backlog
        why = backlog.no_room_for(len(data))
        if why is not None:
            self._drop(event, why)
            return False
        try:
            backlog.append(event.get("event_id"), data)
        except BacklogError as e:
            # Dropped rather than queued in memory: it would overtake the events waiting in
            # the file. The next event tries the file again (the disk may have room by then).
            self._drop(event, str(e))
            return False
        if self.spilled == 0 and full is not None:
            log.msg(
                f"buildstore: {full}; keeping further events in the backlog {backlog.path} "
                f"until the daemon at {self.address} takes them"
            )
        self.spilled += 1
        if self.queue:
            # Safe only once every event before it is too: those in the file are, those in the
            # queue once the last of them is answered (answers come in order).
            if on_safe is not None:
                self.queue[-1].on_safe.append(on_safe)
        else:
            _run_on_safe(on_safe)
        self._refill()
        self._pump()
        return True

    def _refill(self):
        """Moves the backlog's oldest events into the queue, in batches, as the daemon acks."""
        backlog = self.backlog
        if backlog is None or not backlog.waiting:
            return
        count_room = self.queue_size - len(self.queue)
        bytes_room = self.queue_bytes - self.queued_bytes
        if self.queue and (
            count_room < min(100, max(1, self.queue_size // 2))
            or bytes_room < self.queue_bytes // 8
        ):
            return
        try:
            rows = backlog.take(count_room, bytes_room)
            if not rows and not self.queue:
                rows = backlog.take(1, float("inf"))  # larger than the whole queue: alone
        except BacklogError as e:
            self._backlog_failed(backlog, e)
            return
        for seq, event_id, line in rows:
            self.queue.append(_Pending(event_id, line, seq))
            self.queued_bytes += len(line)
        if not backlog.waiting and self.spilled:
            log.msg(
                f"buildstore: the backlog {backlog.path} has caught up; {self.spilled} events "
                "went through it"
            )
            self.spilled = 0

    def _backlog_failed(self, backlog: Backlog, error: BacklogError):
        # The waiting rows can't be read, so they can't be sent: waiting on them would hold up
        # every later event for good. They stay in the file, which the next start tries again,
        # then after newer events.
        log.msg(
            f"buildstore: {error}; no longer using the backlog until the master restarts; "
            f"{backlog.waiting} events waiting in it are sent then, if it can be read"
        )
        backlog.failed = str(error)
        self.backlog = None
        self.spilled = 0

    def _drop(self, event: dict, why: str):
        self.dropped += 1
        # One line per burst, with a running count, so a long outage doesn't flood the log.
        if self._drop_reported == 0 or self.dropped - self._drop_reported >= 1000:
            self._drop_reported = self.dropped
            log.msg(
                f"buildstore: {why}; dropping event {event.get('event_id')!r} "
                f"({self.dropped} dropped so far, daemon at {self.address})"
            )

    @property
    def connected(self) -> bool:
        return self._proto is not None

    def stop(self, timeout: float = 5.0) -> defer.Deferred:
        """Stop, after waiting up to ``timeout`` seconds for the queue to be acknowledged.

        What is still unacknowledged then goes to the front of the backlog, for the next start;
        without a backlog it is lost. The caller closes the backlog.
        """
        d = (
            self.wait_drained(timeout)
            if self._holding() and self._proto is not None
            else defer.succeed(None)
        )

        def close(_):
            self._running = False
            self._closed = True
            self._cancel_retry()
            self._cancel_watchdog()
            if self._proto is not None:
                self._proto.transport.loseConnection()
            self._keep_unacknowledged()

        d.addCallback(close)
        return d

    def _keep_unacknowledged(self):
        backlog, self.backlog = self.backlog, None
        if backlog is None:
            if self.queue:
                log.msg(
                    f"buildstore: stopping with {len(self.queue)} events not acknowledged by "
                    f"{self.address}; they are lost"
                )
            return
        queued, earlier = len(self.queue), backlog.waiting
        if not queued and not earlier:
            return
        there = f" ({earlier} of them were there already)" if earlier else ""
        try:
            backlog.keep_front([(p.event_id, p.line) for p in self.queue])
        except BacklogError as e:
            log.msg(
                f"buildstore: stopping with {queued} events not acknowledged by {self.address} "
                f"and not in the backlog; they are lost: {e}"
            )
            return
        for pending in self.queue:
            pending.safe()
        log.msg(
            f"buildstore: stopping with {queued + earlier} events not acknowledged by "
            f"{self.address}; they are kept in the backlog {backlog.path}{there} and sent at "
            "the next start"
        )
        self.queue.clear()
        self.queued_bytes = 0

    def _holding(self) -> bool:
        return bool(self.queue) or (self.backlog is not None and self.backlog.waiting > 0)

    def wait_drained(self, timeout: float | None = None) -> defer.Deferred:
        """Fires once every held event is acknowledged or rejected (or after ``timeout``)."""
        if not self._holding():
            return defer.succeed(None)
        d = defer.Deferred()
        self._drain_waiters.append(d)
        if timeout is not None:
            call = self.reactor.callLater(timeout, self._give_up_waiting, d)

            def cancel(result):
                if call.active():
                    call.cancel()
                return result

            d.addBoth(cancel)
        return d

    def set_queue_size(self, size: int) -> None:
        self.queue_size = size

    def set_queue_bytes(self, size: int) -> None:
        self.queue_bytes = size

    def take_queue(self, other: BuildstoreClient) -> None:
        """Takes over the events ``other`` holds unacknowledged: a new client replacing it.

        The caller hands the backlog over with ``set_backlog``, after these events.
        """
        self.queue.extend(other.queue)
        self.queued_bytes += other.queued_bytes
        other.queue.clear()
        other.queued_bytes = 0
        # ``other`` is stopped next, and must not write its (empty) queue into the backlog.
        other.backlog = None
        self._pump()

    # -- connecting -------------------------------------------------------------------------

    def _connect(self):
        if not self._running or self._connecting or self._proto is not None:
            return
        self._connecting = True
        d = self.endpoint.connect(DaemonFactory(self))
        d.addErrback(self._connect_failed)

    def _connect_failed(self, failure):
        self._connecting = False
        self._report_unreachable(failure.getErrorMessage())
        self._schedule_retry()

    def _report_unreachable(self, why: str):
        # Said once per outage, then again only when it ends, to keep the master's log readable.
        if not self._reported_unreachable:
            self._reported_unreachable = True
            log.msg(
                f"buildstore: daemon at {self.address} unreachable ({why}); "
                f"{self._held_summary()}, "
                f"retrying with backoff up to {self.max_backoff:g} s"
            )

    def _held_summary(self) -> str:
        waiting = self.backlog.waiting if self.backlog is not None else 0
        if waiting:
            return f"{len(self.queue)} events queued and {waiting} in the backlog"
        return f"{len(self.queue)} events queued"

    def _schedule_retry(self):
        if not self._running or self._retry_call is not None:
            return
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self.max_backoff)
        self._retry_call = self.reactor.callLater(delay, self._retry)

    def _retry(self):
        self._retry_call = None
        self._connect()

    def _cancel_retry(self):
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None

    def _connected(self, proto):
        self._connecting = False
        if not self._running:
            proto.transport.loseConnection()
            return
        self._proto = proto
        self.connections += 1
        self._in_flight = 0
        self._in_flight_bytes = 0
        if self._reported_unreachable:
            self._reported_unreachable = False
            log.msg(f"buildstore: connected to {self.address}; resending {self._held_summary()}")
        elif self.connections == 1:
            log.msg(f"buildstore: connected to {self.address}")
        if self.token is not None:
            hello = json.dumps({"type": "hello", "token": self.token}).encode() + b"\n"
            proto.transport.write(hello)
            self._awaiting_hello = True
            self._arm_watchdog()
        self._pump()

    def _disconnected(self, proto, reason):
        if proto is not self._proto:
            return  # already given up on in _drop_connection
        self._forget_connection()
        if self._running:
            self._report_unreachable(reason.getErrorMessage())
            self._schedule_retry()

    def _drop_connection(self, why: str):
        """Gives up on the connection now: replies still buffered from it must not count."""
        proto = self._proto
        if proto is None:
            return
        self._forget_connection()
        proto.transport.abortConnection()
        if self._running:
            self._report_unreachable(why)
            self._schedule_retry()

    def _forget_connection(self):
        self._proto = None
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._awaiting_hello = False
        self._cancel_watchdog()

    # -- the line exchange ------------------------------------------------------------------

    def _pump(self):
        proto = self._proto
        if proto is None:
            return
        lines = []
        while (
            self._in_flight < len(self.queue)
            and self._in_flight < self.max_in_flight
            and (self._in_flight_bytes < self.max_in_flight_bytes or self._in_flight == 0)
        ):
            line = self.queue[self._in_flight].line
            lines.append(line)
            self._in_flight += 1
            self._in_flight_bytes += len(line)
        if lines:
            proto.transport.writeSequence(lines)
            if self._watchdog is None:
                self._arm_watchdog()

    def _reply(self, proto, raw: bytes):
        if proto is not self._proto:
            return
        try:
            reply = json.loads(raw)
            if not isinstance(reply, dict):
                raise ValueError("not an object")
        except ValueError:
            self._drop_connection(f"unexpected reply {_summary(raw)!r}")
            return
        # A reply is a sign of life: the timer starts again, for the lines still in flight. The
        # hello's own is answered first, so that an idle connection is not dropped as silent.
        # (The delay before reconnecting is reset by an ack only: a daemon whose spool is full
        # says hello too, and then refuses every event.)
        awaiting_hello, self._awaiting_hello = self._awaiting_hello, False
        self._arm_watchdog()

        if awaiting_hello:
            if "error" in reply:
                self._drop_connection(f"token refused: {reply['error']}")
            return

        if self._in_flight == 0:
            self._drop_connection(f"reply {_summary(raw)!r} for no event")
            return
        head = self.queue[0]
        if "error" in reply:
            message = str(reply.get("error"))
            if reply.get("retry") or reply.get("closing"):
                # Not the event's fault (full spool, missing hello): keep it, resend later.
                self._drop_connection(f"cannot take events now: {message}")
                return
            self.rejected += 1
            log.msg(f"buildstore: daemon rejected event: {message}; event: {_summary(head.line)}")
        else:
            if "ack" in reply and reply["ack"] != head.event_id and head.event_id is not None:
                log.msg(
                    f"buildstore: ack {reply['ack']!r} does not match event {head.event_id!r}; "
                    "counting it for the oldest event in flight"
                )
            self.acknowledged += 1
            self._backoff = self.initial_backoff
        self.queue.popleft()
        head.safe()
        self.queued_bytes -= len(head.line)
        self._in_flight -= 1
        self._in_flight_bytes -= len(head.line)
        if self._in_flight == 0:
            self._cancel_watchdog()
        if head.seq is not None and self.backlog is not None:
            try:
                self.backlog.acknowledged(head.seq)
            except BacklogError as e:
                # Rows left in the file are sent again later and skipped by the daemon.
                log.msg(f"buildstore: {e}; acknowledged events stay in the backlog for now")
        self._refill()
        if self._drop_reported and self._has_room_again():
            log.msg(f"buildstore: queue has room again; {self.dropped} events were dropped")
            self._drop_reported = 0
        self._pump()
        if not self.queue:
            self._notify_drained()

    def _has_room_again(self) -> bool:
        # Half of each bound, so that a queue at the edge doesn't say so for every event.
        return len(self.queue) < self.queue_size // 2 and self.queued_bytes < self.queue_bytes // 2

    # -- a daemon that stops answering ------------------------------------------------------

    def _arm_watchdog(self):
        self._cancel_watchdog()
        if self._in_flight > 0 or self._awaiting_hello:
            self._watchdog = self.reactor.callLater(self.reply_timeout, self._no_reply)

    def _cancel_watchdog(self):
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None

    def _no_reply(self):
        self._watchdog = None
        self._drop_connection(f"no reply for {self.reply_timeout:g} s")

    # -- waiting for the queue to empty -----------------------------------------------------

    def _notify_drained(self):
        waiters, self._drain_waiters = self._drain_waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    def _give_up_waiting(self, d):
        if d in self._drain_waiters:
            self._drain_waiters.remove(d)
        if not d.called:
            d.callback(None)
