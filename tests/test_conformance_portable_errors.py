"""The conformance suite's ``portable_errors`` on the project's three backends (``conformance_backend`` in conftest)."""

from rayrunnables.testing.conformance.portable_errors import *  # noqa: F403
