"""Buildbot plugin that reports builds to buildstore.

Enable it in ``master.cfg``::

    from buildstore_buildbot import BuildstoreReporter
    c['services'].append(BuildstoreReporter("tcp://127.0.0.1:9989", master_id="m1"))
"""

from buildstore_buildbot.reporter import BuildstoreReporter

__all__ = ["BuildstoreReporter"]
__version__ = "0.1.0"
