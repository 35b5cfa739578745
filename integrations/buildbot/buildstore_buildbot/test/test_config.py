"""The options of the reporter: what the configuration refuses, what it takes, and how long a
stop waits."""

from twisted.internet import defer
from twisted.trial import unittest

from buildstore_buildbot import BuildstoreReporter
from buildstore_buildbot.test.test_reporter import ReporterTestCase


class TestConfig(unittest.TestCase):
    def test_bad_options_are_config_errors(self):
        from buildbot.config.errors import ConfigErrors
        from buildbot.config.errors import capture_config_errors

        for kwargs in (
            {"address": "http://x", "master_id": "m1"},
            {"address": "tcp://127.0.0.1:9989"},
            {"address": "tcp://127.0.0.1:9989", "master_id": "a/b"},
            {"address": "tcp://127.0.0.1:9989", "master_id": ".."},
            {"address": "unix:/run/b.sock", "master_id": "m1", "queue_size": 0},
            {"address": "unix:/run/b.sock", "master_id": "m1", "queue_bytes": 0},
            {"address": "unix:/run/b.sock", "master_id": "m1", "queue_bytes": "64M"},
            {"address": "unix:/run/b.sock", "master_id": "m1", "backlog": ""},
            {"address": "unix:/run/b.sock", "master_id": "m1", "backlog": 5},
            {"address": "unix:/run/b.sock", "master_id": "m1", "backlog_bytes": 0},
            {"address": "tcp://127.0.0.1:99890", "master_id": "m1"},
            {"address": "unix:/run/b.sock", "master_id": "m" * 257},
            {"address": "unix:/run/b.sock", "master_id": "m" * 255 + "\udc80"},
            {"address": "unix:/run/b.sock", "master_id": 1 << 63},
            {"address": "unix:/run/b.sock", "master_id": "m1", "stop_timeout": None},
            {"address": "unix:/run/b.sock", "master_id": "m1", "stop_timeout": -1},
        ):
            with self.assertRaises(ConfigErrors, msg=kwargs):
                with capture_config_errors(raise_on_error=True):
                    BuildstoreReporter(**kwargs)

    def test_good_options(self):
        BuildstoreReporter(
            "unix:/run/buildstore.sock", master_id=1, token="s3cret", queue_size=5, queue_bytes=1
        )


class TestStopTimeout(ReporterTestCase):
    @defer.inlineCallbacks
    def test_a_stop_waits_stop_timeout_in_all(self):
        # A message whose data API reads never answer: its job runs past the stop.
        build = yield self.master.data.get(("builds", 20))
        reads = []

        def get(*args, **kwargs):
            reads.append(defer.Deferred())
            return reads[-1]

        self.patch(self.master.data, "get", get)
        self.master.mq.callConsumer(("builds", "20", "new"), build)
        self.assertTrue(reads)
        stopping = self.reporter.disownServiceParent()
        self.reactor.advance(5)  # the default stop_timeout
        self.assertTrue(stopping.called)
        # The client got what was left of the 5 s, not 5 s more.
        self.assertEqual(self.reporter.client.stop_timeout, 0)
        for read in reads:
            read.cancel()
        self.flushLoggedErrors(defer.CancelledError)
        yield stopping
