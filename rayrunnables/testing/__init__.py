"""Testing utilities shipped with the package.

Each utility lives in its own module, imported by its full name:

- :mod:`rayrunnables.testing.openai_server` — ``OpenAIServer``, an OpenAI-compatible chat-completions
  server with real request and token rate limits (429s with ``retry-after``), for tests and benchmarks.
- :mod:`rayrunnables.testing.conformance` — the conformance suite every backend passes;
  ``from rayrunnables.testing.conformance.suite import *`` and one ``conformance_backend`` fixture run
  it on a backend of your own (:mod:`rayrunnables.testing.plugin` makes its ``backend``/``cfg`` fixtures).
- :mod:`rayrunnables.testing.steps` — the steps those tests send to workers (importable by name).
"""
