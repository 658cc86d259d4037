"""The conformance suite's ``rate_limits`` on the project's three backends (``conformance_backend`` in conftest)."""

from rayrunnables.testing.conformance.rate_limits import *  # noqa: F403
