"""rayrunnables: write a LangChain-style chain once; run it in-process, on local Ray, or on a Ray cluster.

``import rayrunnables`` never imports Ray; the Ray backend loads it on first use.
"""

from .backends import Backend, available_backends, get_backend, register_backend, use
from .config import RunnableConfig
from .errors import (
    BackendError,
    ConfigError,
    InputTypeError,
    OptionsError,
    RayRunnablesError,
    ReadOnlyInputError,
    StepConstructionError,
    StepRecursionError,
    UnpicklableOutputError,
    UnpicklableStepError,
    VectorizedOutputError,
    item_index_of,
    step_path_of,
)
from .runnables import (
    Runnable,
    RunnableActor,
    RunnableAssign,
    RunnableBinding,
    RunnableBranch,
    RunnableEach,
    RunnableGenerator,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
    RunnablePick,
    RunnableRateLimited,
    RunnableRetry,
    RunnableSequence,
    RunnableWithFallbacks,
    chain,
)

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "ConfigError",
    "InputTypeError",
    "OptionsError",
    "RayRunnablesError",
    "ReadOnlyInputError",
    "Runnable",
    "RunnableActor",
    "RunnableAssign",
    "RunnableBinding",
    "RunnableBranch",
    "RunnableConfig",
    "RunnableEach",
    "RunnableGenerator",
    "RunnableLambda",
    "RunnableParallel",
    "RunnablePassthrough",
    "RunnablePick",
    "RunnableRateLimited",
    "RunnableRetry",
    "RunnableSequence",
    "RunnableWithFallbacks",
    "StepConstructionError",
    "StepRecursionError",
    "UnpicklableOutputError",
    "UnpicklableStepError",
    "VectorizedOutputError",
    "__version__",
    "available_backends",
    "chain",
    "get_backend",
    "item_index_of",
    "register_backend",
    "step_path_of",
    "use",
]
