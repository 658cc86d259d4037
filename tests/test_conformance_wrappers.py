"""The conformance suite's ``wrappers`` on the project's three backends (``conformance_backend`` in conftest)."""

from rayrunnables.testing.conformance.wrappers import *  # noqa: F403
