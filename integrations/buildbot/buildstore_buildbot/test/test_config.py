"""The options of the reporter: what the configuration refuses, and what it takes."""

from twisted.trial import unittest

from buildstore_buildbot import BuildstoreReporter


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
