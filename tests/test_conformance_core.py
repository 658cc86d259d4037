"""The conformance suite's ``core`` on the project's three backends (``conformance_backend`` in conftest)."""

from rayrunnables.testing.conformance.core import *  # noqa: F403
