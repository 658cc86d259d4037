"""What a process learns stays bounded when it receives new chains all day, as a Ray worker does."""

from __future__ import annotations

import pickle

from rayrunnables import RunnableActor, RunnableLambda
from rayrunnables.engine.process_state import PROFILES_KEPT, STATE
from rayrunnables.recent import Recent
from rayrunnables.services import INSTANCES_KEPT, PACERS_KEPT


def double(x: int) -> int:
    return x * 2


class Model:
    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, x: int) -> int:
        return x + self.n


def arrive(step: object) -> object:
    """The step as a worker gets it: pickled, with its step id, for every chunk."""
    return pickle.loads(pickle.dumps(step))


def test_learned_classes_instances_and_pacers_stay_bounded() -> None:
    cfg = {"backend": "local"}
    for i in range(PROFILES_KEPT + 500):  # new chains all day: each a step this process never saw
        assert arrive(RunnableLambda(double, name=f"step{i}")).invoke(i, cfg) == 2 * i
    assert len(STATE.profiles) <= PROFILES_KEPT
    for i in range(INSTANCES_KEPT + 20):
        assert RunnableActor(Model, i).invoke(1, cfg) == 1 + i
    assert len(STATE.services._instances) <= INSTANCES_KEPT
    for i in range(PACERS_KEPT + 50):
        assert RunnableLambda(double).with_rate_limit(1000).invoke(i, cfg) == 2 * i
    assert len(STATE.services._pacers) <= PACERS_KEPT


def test_a_step_seen_again_keeps_what_was_learned_of_it() -> None:
    step = RunnableLambda(double, name="again")
    sent = pickle.dumps(step)
    for _ in range(50):
        pickle.loads(sent).invoke(1, {"backend": "local"})
    step_id = pickle.loads(sent).__dict__["_step_id"]
    learned = STATE.profiles.get(step_id)
    assert learned is not None
    pickle.loads(sent).invoke(1, {"backend": "local"})
    assert STATE.profiles.get(step_id) is learned


def test_recent_drops_the_least_recently_used() -> None:
    recent: Recent[str, int] = Recent(2)
    recent.setdefault("a", 1)
    recent.setdefault("b", 2)
    assert recent.get("a") == 1  # "a" is now the most recent
    recent.setdefault("c", 3)
    assert "b" not in recent and list(recent) == ["a", "c"]
