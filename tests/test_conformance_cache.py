"""The conformance suite's ``cache`` on the project's three backends (``conformance_backend`` in conftest)."""

from rayrunnables.testing.conformance.cache import *  # noqa: F403
