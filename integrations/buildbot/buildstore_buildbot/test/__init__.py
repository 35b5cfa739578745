"""Unit tests of the plugin: ``python -m twisted.trial buildstore_buildbot``."""

import warnings

import buildbot.test  # noqa: F401  Buildbot's test-time patches, as its fake master expects

# Importing buildbot.test turns every warning into an error. Deprecations raised inside newer
# releases of Buildbot's own dependencies (Twisted, Alembic) say nothing about this plugin.
warnings.filterwarnings("default", category=DeprecationWarning)
warnings.filterwarnings("ignore", message="No path_separator found", category=DeprecationWarning)
