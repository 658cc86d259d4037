"""The algebra: frozen nodes that say what to compute. Nothing here knows about Ray."""

from .base import Runnable, coerce_to_runnable
from .branch import RunnableBranch
from .each import RunnableEach
from .lambda_ import RunnableLambda, chain
from .parallel import RunnableParallel
from .passthrough import RunnableAssign, RunnablePassthrough, RunnablePick
from .sequence import RunnableSequence
from .wrappers import RunnableBinding, RunnableRetry, RunnableWithFallbacks

__all__ = [
    "Runnable",
    "RunnableAssign",
    "RunnableBinding",
    "RunnableBranch",
    "RunnableEach",
    "RunnableLambda",
    "RunnableParallel",
    "RunnablePassthrough",
    "RunnablePick",
    "RunnableRetry",
    "RunnableSequence",
    "RunnableWithFallbacks",
    "chain",
    "coerce_to_runnable",
]
