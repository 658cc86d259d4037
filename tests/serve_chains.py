"""Chains the serving tests put behind Ray Serve, module-level so replicas and workers import the same ones.

``lc_chain()`` is the done-means chain: a dict of branches, one a prompt and a streaming chat model, one
a ``.map()``; langchain-core running it in the test process is the oracle for what the server answers.
``misc`` runs one of a few test actions named by its input (fail, beat a heartbeat, sleep), so one
deployment serves every error and cancellation test.
"""

from __future__ import annotations

import time
from typing import Any

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda as LCLambda
from langchain_core.runnables import RunnableParallel as LCParallel

import rayrunnables as rr
from rayrunnables.testing.steps.cancel import heartbeat

PROMPT = ChatPromptTemplate.from_messages([("human", "say {topic}")])


def prompt_words(prompt: Any) -> list[str]:
    return str(prompt.to_string()).split()


def shout(word: str) -> str:
    return word.upper()


def lc_chain() -> Any:
    """A LangChain chain: a dict of branches, a ``.map()``, and a chat model that streams its answer. Both
    branches start with the prompt, so LangChain's input schema names the field (``topic``)."""
    model = FakeListChatModel(responses=["one two three"])
    return LCParallel(
        answer=PROMPT | model | StrOutputParser(),
        words=PROMPT | LCLambda(prompt_words) | LCLambda(shout).map(),
    )


def act(request: dict[str, Any]) -> Any:
    """``{"do": "fail"|"beat"|"sleep"|"echo", "arg": ...}``: what the error and cancellation tests need."""
    what, arg = request["do"], request.get("arg")
    if what == "fail":
        raise ValueError(f"failed on purpose: secret={arg}")
    if what == "beat":
        return heartbeat(arg)
    if what == "sleep":
        time.sleep(float(arg))
        return arg
    return arg


def misc() -> Any:
    return rr.RunnableLambda(act)


def call_sizes(items: list[Any]) -> list[int]:
    """Vectorized: each item's output is how many items its call got."""
    return [len(items)] * len(items)


def batched() -> Any:
    return rr.RunnableLambda(call_sizes, batched=True)
