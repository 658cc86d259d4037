"""The conformance suite's ``errors`` on the project's three backends (``conformance_backend`` in conftest)."""

from rayrunnables.testing.conformance.errors import *  # noqa: F403
