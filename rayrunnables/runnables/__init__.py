"""The algebra: frozen nodes that say what to compute. Nothing here knows about Ray."""

from .actor import RunnableActor
from .base import Runnable, coerce_to_runnable
from .branch import RunnableBranch
from .cached import RunnableCached
from .each import RunnableEach
from .generator import RunnableGenerator
from .lambda_ import RunnableLambda, chain
from .parallel import RunnableParallel
from .passthrough import RunnableAssign, RunnablePassthrough, RunnablePick
from .sequence import RunnableSequence
from .timeout import RunnableTimeout, cancel_requested
from .wrappers import RunnableBinding, RunnableRateLimited, RunnableRetry, RunnableWithFallbacks

__all__ = [
    "Runnable",
    "RunnableActor",
    "RunnableAssign",
    "RunnableBinding",
    "RunnableBranch",
    "RunnableCached",
    "RunnableEach",
    "RunnableGenerator",
    "RunnableLambda",
    "RunnableParallel",
    "RunnablePassthrough",
    "RunnablePick",
    "RunnableRateLimited",
    "RunnableRetry",
    "RunnableTimeout",
    "cancel_requested",
    "RunnableSequence",
    "RunnableWithFallbacks",
    "chain",
    "coerce_to_runnable",
]
