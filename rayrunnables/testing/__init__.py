"""Testing utilities shipped with the package.

Each utility lives in its own module, imported by its full name:

- :mod:`rayrunnables.testing.openai_server` — ``OpenAIServer``, an OpenAI-compatible chat-completions
  server with real request and token rate limits (429s with ``retry-after``), for tests and benchmarks.
"""
