"""The client against a small fake daemon on a real local socket, and its backoff on a clock."""

import json
import os
import shutil
import tempfile

from twisted.internet import defer
from twisted.internet import protocol
from twisted.internet import reactor
from twisted.internet import task
from twisted.protocols.basic import LineReceiver
from twisted.python import log
from twisted.trial import unittest

from buildstore_buildbot import events
from buildstore_buildbot.client import BuildstoreClient
from buildstore_buildbot.connection import parse_address
from buildstore_buildbot.encoding import encode_event


class _DaemonConnection(LineReceiver):
    delimiter = b"\n"

    def connectionMade(self):
        self.lines = []
        self.received = []
        self.factory.connections.append(self)

    def lineReceived(self, line):
        self.lines.append(line)
        event = json.loads(line)
        self.received.append(event)
        if event.get("type") == "hello":
            ok = event.get("token") == self.factory.token
            self.sendLine(json.dumps({"hello": "ok"} if ok else {"error": "wrong token"}).encode())
            return
        if not self.factory.hold:
            self.sendLine(json.dumps(self.factory.answer(event, len(self.received))).encode())


class FakeDaemon(protocol.Factory):
    """Answers each line in order like ``buildstore serve``: ack, or what ``answer`` says.

    With ``hold`` set it takes lines without answering, like a daemon killed before its fsync.
    """

    protocol = _DaemonConnection

    def __init__(self, token=None):
        self.token = token
        self.hold = False
        self.connections = []
        self.port = None
        self.answer = lambda event, n: {"ack": event.get("event_id")}

    def listen(self, port=0):
        self.port = reactor.listenTCP(port, self, interface="127.0.0.1")
        return self.port.getHost().port

    @defer.inlineCallbacks
    def stop(self):
        for conn in self.connections:
            conn.transport.abortConnection()
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None

    def ids(self, connection=-1):
        conn = self.connections[connection]
        return [e.get("event_id") for e in conn.received if e.get("type") != "hello"]


def event(n):
    return {
        "type": "builder_state",
        "master_id": "m1",
        "event_id": f"e{n}",
        "builder": "b",
        "state": "idle",
    }


def strict_json(line):
    """``line`` parsed as the daemon parses it: NaN and Infinity are not JSON."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


@defer.inlineCallbacks
def until(condition, timeout=10.0):
    """Waits for ``condition()`` to hold, polling; fails after ``timeout`` seconds."""
    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        yield task.deferLater(reactor, 0.02, lambda: None)
        waited += 0.02


class LogCapture:
    def __init__(self, testcase):
        self.messages = []
        log.addObserver(self._observe)
        testcase.addCleanup(log.removeObserver, self._observe)

    def _observe(self, event):
        # `log.err(failure, why)` leaves `message` empty and says what it was doing in `why`.
        parts = [str(m) for m in event.get("message", ())]
        if event.get("why"):
            parts.append(str(event["why"]))
        self.messages.append(" ".join(parts))

    def matching(self, text):
        return [m for m in self.messages if text in m]


class ClientTestCase(unittest.TestCase):
    def setUp(self):
        self.daemon = FakeDaemon()
        self.port = self.daemon.listen()
        self.addCleanup(self.daemon.stop)
        self.logs = LogCapture(self)

    def client(self, address=None, **kwargs):
        kwargs.setdefault("initial_backoff", 0.05)
        kwargs.setdefault("max_backoff", 0.2)
        c = BuildstoreClient(address or f"tcp://127.0.0.1:{self.port}", reactor=reactor, **kwargs)
        self.addCleanup(c.stop, 0)
        return c


class TestExchange(ClientTestCase):
    @defer.inlineCallbacks
    def test_events_are_json_lines_acknowledged_in_order(self):
        c = self.client()
        c.start()
        for n in range(5):
            self.assertTrue(c.send(event(n)))
        yield c.wait_drained(timeout=10)
        self.assertEqual(c.acknowledged, 5)
        self.assertEqual(len(c.queue), 0)
        self.assertEqual(self.daemon.ids(), [f"e{n}" for n in range(5)])
        self.assertEqual(self.daemon.connections[0].received[0], event(0))

    @defer.inlineCallbacks
    def test_token_goes_first(self):
        self.daemon.token = "s3cret"
        c = self.client(token="s3cret")
        c.start()
        c.send(event(1))
        yield c.wait_drained(timeout=10)
        first = self.daemon.connections[0].received[0]
        self.assertEqual(first, {"type": "hello", "token": "s3cret"})
        self.assertEqual(c.acknowledged, 1)

    @defer.inlineCallbacks
    def test_an_idle_connection_with_a_token_stays_open(self):
        self.daemon.token = "s3cret"
        c = self.client(token="s3cret", reply_timeout=0.5)
        c.start()
        yield until(lambda: c.connected and not c._awaiting_hello)  # the hello answered
        yield task.deferLater(reactor, 1.5, lambda: None)
        self.assertTrue(c.connected)
        self.assertEqual(len(self.daemon.connections), 1)
        self.assertEqual(self.logs.matching("no reply"), [])

    @defer.inlineCallbacks
    def test_rejected_event_is_logged_and_dropped(self):
        self.daemon.answer = lambda e, n: (
            {"error": "missing field `builder`", "line": n}
            if e["event_id"] == "e1"
            else {"ack": e["event_id"]}
        )
        c = self.client()
        c.start()
        for n in range(3):
            c.send(event(n))
        yield c.wait_drained(timeout=10)
        self.assertEqual((c.acknowledged, c.rejected, len(c.queue)), (2, 1, 0))
        [line] = self.logs.matching("rejected")
        self.assertIn("missing field `builder`", line)
        self.assertIn('"event_id":"e1"', line)

        # A reconnect resends nothing of it.
        yield self.daemon.stop()
        self.daemon.listen(self.port)
        c.send(event(3))
        yield c.wait_drained(timeout=10)
        self.assertEqual(self.daemon.ids(), ["e3"])

    @defer.inlineCallbacks
    def test_unix_socket(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "bs.sock")
        port = reactor.listenUNIX(path, self.daemon)
        self.addCleanup(port.stopListening)
        c = self.client(address=f"unix:{path}")
        c.start()
        c.send(event(1))
        yield c.wait_drained(timeout=10)
        self.assertEqual(c.acknowledged, 1)


class TestEncoding(ClientTestCase):
    @defer.inlineCallbacks
    def send_one(self, event):
        """Sends ``event`` and returns the line the daemon received, strictly parsed."""
        c = self.client()
        self.assertTrue(c.send(event))
        c.start()
        yield c.wait_drained(timeout=10)
        self.assertEqual((c.acknowledged, c.dropped), (1, 0))
        [line] = self.daemon.connections[0].lines
        return strict_json(line)

    @defer.inlineCallbacks
    def test_non_finite_float_properties_are_sent_as_strings_in_strict_json(self):
        props = {
            "ratio": (float("nan"), "Step"),
            "timeout": (float("inf"), "Force"),
            "floor": (float("-inf"), "Force"),
            "jobs": (4.5, "Force"),
        }
        build = {"buildid": 42, "number": 7, "started_at": 1773324451}
        sent = yield self.send_one(events.build_started("m1", build, "linux", properties=props))
        self.assertEqual(sent["event_id"], "build-42-started")
        self.assertEqual(
            sent["properties"],
            {
                "ratio": {"value": "NaN", "source": "Step"},
                "timeout": {"value": "Infinity", "source": "Force"},
                "floor": {"value": "-Infinity", "source": "Force"},
                "jobs": {"value": 4.5, "source": "Force"},
            },
        )

    @defer.inlineCallbacks
    def test_values_json_cannot_hold_are_sent_as_their_text(self):
        class Version:
            def __str__(self):
                return "1.2.0"

        event = events.property_event("m1", 42, "version", Version(), "Step")
        sent = yield self.send_one(event)
        self.assertEqual((sent["event_id"], sent["value"]), (event["event_id"], "1.2.0"))

    @defer.inlineCallbacks
    def test_a_lone_surrogate_goes_as_a_replacement_character_and_a_pair_as_its_character(self):
        # "\udc80" comes back from Buildbot's database as a JSON escape; UTF-8 cannot spell it.
        props = {"path": ("bad\udc80name", "Env"), "emoji": ("\ud83d\ude00", "Step")}
        build = {"buildid": 43, "number": 8, "started_at": 1773324451}
        sent = yield self.send_one(events.build_started("m1", build, "linux", properties=props))
        self.assertEqual(sent["properties"]["path"]["value"], "bad\ufffdname")
        self.assertEqual(sent["properties"]["emoji"]["value"], "\U0001f600")


class TestResend(ClientTestCase):
    @defer.inlineCallbacks
    def test_unacknowledged_events_are_resent_after_reconnect(self):
        c = self.client()
        c.start()
        c.send(event(0))
        yield c.wait_drained(timeout=10)

        # The daemon takes two lines but dies before acknowledging them.
        self.daemon.hold = True
        c.send(event(1))
        c.send(event(2))
        yield until(lambda: len(self.daemon.ids()) == 3)
        yield self.daemon.stop()
        yield until(lambda: not c.connected)
        c.send(event(3))  # while it is down
        self.assertEqual(len(c.queue), 3)

        self.daemon.hold = False
        self.daemon.listen(self.port)
        yield c.wait_drained(timeout=10)
        self.assertEqual(self.daemon.ids(), ["e1", "e2", "e3"])
        self.assertEqual(c.acknowledged, 4)
        self.assertTrue(self.logs.matching("unreachable"))
        self.assertTrue(self.logs.matching("resending 3 events"))

    def test_retry_reply_keeps_the_event_for_later(self):
        return self.refused_then_resent({"error": "spool full", "retry": True, "closing": True})

    def test_closing_reply_keeps_the_event_for_later(self):
        # e.g. a daemon that now wants a token: the event is not at fault, so it is kept
        return self.refused_then_resent({"error": "needs hello first", "closing": True})

    @defer.inlineCallbacks
    def refused_then_resent(self, refusal):
        refused = []

        def answer(e, n):
            if e["event_id"] == "e1" and not refused:
                refused.append(n)
                return dict(refusal, line=n)
            return {"ack": e["event_id"]}

        self.daemon.answer = answer
        c = self.client()
        c.start()
        for n in range(3):
            c.send(event(n))
        yield c.wait_drained(timeout=10)
        self.assertEqual(c.rejected, 0)
        self.assertEqual(self.daemon.ids(), ["e1", "e2"])  # the second connection starts at e1
        self.assertEqual(self.daemon.ids(0)[:2], ["e0", "e1"])

    @defer.inlineCallbacks
    def test_a_daemon_that_says_hello_but_takes_nothing_is_tried_less_and_less_often(self):
        # A full spool: the hello is answered, every event refused for now.
        self.daemon.token = "s3cret"
        self.daemon.answer = lambda e, n: {"error": "full", "line": n, "retry": True}
        c = self.client(token="s3cret", initial_backoff=0.05, max_backoff=0.4)
        c.start()
        c.send(event(0))
        yield task.deferLater(reactor, 1.2, lambda: None)
        # 0.05 + 0.1 + 0.2 + 0.4 + 0.4 s between tries: six connections, not one every 0.05 s.
        self.assertLessEqual(len(self.daemon.connections), 8)
        self.assertGreaterEqual(len(self.daemon.connections), 3, "it does try again")
        self.assertEqual(c.acknowledged, 0)

    @defer.inlineCallbacks
    def test_silent_daemon_is_dropped_and_events_resent(self):
        c = self.client(reply_timeout=0.3)
        c.start()
        self.daemon.hold = True
        c.send(event(1))
        yield until(lambda: len(self.daemon.connections) == 1 and self.daemon.ids() == ["e1"])
        self.daemon.hold = False
        yield c.wait_drained(timeout=10)
        self.assertEqual(len(self.daemon.connections), 2)
        self.assertTrue(self.logs.matching("no reply"))


class TestQueueBound(ClientTestCase):
    @defer.inlineCallbacks
    def test_full_queue_drops_new_events_with_a_log_line(self):
        yield self.daemon.stop()
        c = self.client(queue_size=3)
        c.start()
        sent = [c.send(event(n)) for n in range(5)]
        self.assertEqual(sent, [True, True, True, False, False])
        self.assertEqual(c.dropped, 2)
        [line] = self.logs.matching("queue full")
        self.assertIn("3 unacknowledged events, the queue_size bound", line)

        self.daemon.listen(self.port)
        yield c.wait_drained(timeout=10)
        self.assertEqual(self.daemon.ids(), ["e0", "e1", "e2"])

    def assertBytesExact(self, c):
        self.assertEqual(c.queued_bytes, sum(len(p.line) for p in c.queue))

    @defer.inlineCallbacks
    def test_events_that_would_pass_the_byte_bound_are_dropped_with_a_log_line(self):
        size = len(encode_event(event(0))) + 1  # every event(n < 10) is this long
        c = self.client(queue_size=100, queue_bytes=2 * size + size // 2)
        sent = [c.send(event(n)) for n in range(5)]  # not started: as if the daemon were down
        self.assertEqual(sent, [True, True, False, False, False])
        self.assertEqual((c.dropped, c.queued_bytes), (3, 2 * size))
        [line] = self.logs.matching("queue full")
        self.assertIn(f"({2 * size} bytes in 2 unacknowledged events; {size} more", line)
        self.assertIn(f"the queue_bytes bound, {2 * size + size // 2})", line)
        self.assertIn("dropping event 'e2' (1 dropped so far", line)

        c.start()
        yield c.wait_drained(timeout=10)
        self.assertEqual(self.daemon.ids(), ["e0", "e1"])
        self.assertEqual(c.queued_bytes, 0)
        self.assertTrue(self.logs.matching("queue has room again; 3 events were dropped"))
        self.assertTrue(c.send(event(5)))

    @defer.inlineCallbacks
    def test_an_event_larger_than_the_whole_byte_bound_is_dropped_and_the_next_ones_go_on(self):
        c = self.client(queue_bytes=1000)
        c.start()
        [[big], _] = events.log_events("m1", 42, 1, 17, "stdout", "x" * 2000, 0)
        self.assertFalse(c.send(big))
        self.assertEqual((c.dropped, c.queued_bytes, len(c.queue)), (1, 0, 0))
        [line] = self.logs.matching("larger than the whole queue")
        self.assertIn("(the queue_bytes bound, 1000); dropping event 'log-17-stdout-@0-2000'", line)
        self.assertEqual([c.send(event(n)) for n in range(3)], [True] * 3)
        yield c.wait_drained(timeout=10)
        self.assertEqual(self.daemon.ids(), ["e0", "e1", "e2"])
        self.assertEqual(c.queued_bytes, 0)

    @defer.inlineCallbacks
    def test_queued_bytes_stay_exact_through_acks_rejections_resends_and_drops(self):
        refused = []

        def answer(e, n):
            if e["event_id"] == "e1":
                return {"error": "bad event", "line": n}
            if e["event_id"] == "e3" and not refused:
                refused.append(n)
                return {"error": "spool full", "line": n, "retry": True, "closing": True}
            return {"ack": e["event_id"]}

        def sized(n):  # events of different lengths
            return dict(event(n), builder="b" * (10 * n + 1))

        self.daemon.answer = answer
        c = self.client()
        c.start()
        for n in range(6):
            c.send(sized(n))
        self.assertBytesExact(c)
        yield c.wait_drained(timeout=10)
        self.assertEqual((c.acknowledged, c.rejected, c.queued_bytes), (5, 1, 0))
        self.assertEqual(len(self.daemon.connections), 2)  # e3 was refused for now, then resent

        # Taken by a daemon that dies before answering: kept, and resent to the next one.
        self.daemon.hold = True
        for n in range(6, 9):
            c.send(sized(n))
        yield until(lambda: self.daemon.ids()[-1:] == ["e8"])
        yield self.daemon.stop()
        yield until(lambda: not c.connected)
        self.assertBytesExact(c)
        c.set_queue_bytes(c.queued_bytes + 10)
        self.assertFalse(c.send(sized(9)))
        self.assertBytesExact(c)
        self.daemon.hold = False
        self.daemon.listen(self.port)
        yield c.wait_drained(timeout=10)
        self.assertEqual(self.daemon.ids(), ["e6", "e7", "e8"])
        self.assertEqual((c.acknowledged, c.dropped, c.queued_bytes), (8, 1, 0))

    @defer.inlineCallbacks
    def test_a_client_taking_over_a_queue_takes_its_byte_count(self):
        old = self.client()  # never started: as if its daemon were down
        for n in range(3):
            old.send(event(n))
        held = old.queued_bytes
        new = self.client()
        new.take_queue(old)
        self.assertEqual((old.queued_bytes, len(old.queue)), (0, 0))
        self.assertEqual((new.queued_bytes, len(new.queue)), (held, 3))

        new.start()
        yield new.wait_drained(timeout=10)
        self.assertEqual(self.daemon.ids(), ["e0", "e1", "e2"])
        self.assertEqual(new.queued_bytes, 0)


class _RefusingEndpoint:
    def __init__(self, clock):
        self.clock = clock
        self.attempts = []

    def connect(self, factory):
        self.attempts.append(self.clock.seconds())
        return defer.fail(ConnectionRefusedError("connection refused"))


class TestBackoff(unittest.TestCase):
    def test_reconnect_delay_doubles_up_to_the_cap(self):
        clock = task.Clock()
        c = BuildstoreClient("tcp://127.0.0.1:1", reactor=clock, initial_backoff=1, max_backoff=8)
        c.endpoint = _RefusingEndpoint(clock)
        logs = LogCapture(self)
        c.start()
        for _ in range(60):
            clock.advance(1)
        attempts = c.endpoint.attempts
        gaps = [b - a for a, b in zip(attempts, attempts[1:])]
        self.assertEqual(gaps[:6], [1, 2, 4, 8, 8, 8])
        # One line for the outage, not one per attempt.
        self.assertEqual(len(logs.matching("unreachable")), 1)
        c.stop(0)
        self.assertEqual(clock.getDelayedCalls(), [])


class TestAddress(unittest.TestCase):
    def test_forms(self):
        self.assertEqual(parse_address("tcp://127.0.0.1:9989"), ("tcp", ("127.0.0.1", 9989)))
        self.assertEqual(parse_address("tcp://[::1]:9989"), ("tcp", ("::1", 9989)))
        self.assertEqual(
            parse_address("unix:/run/buildstore.sock"), ("unix", "/run/buildstore.sock")
        )
        for bad in ("127.0.0.1:9989", "tcp://host", "unix:", "http://x:1"):
            self.assertRaises(ValueError, parse_address, bad)
