"""The public surface: ``__all__`` is exactly what we promise, and ``import rayrunnables`` leaves Ray alone."""

from __future__ import annotations

import subprocess
import sys

import rayrunnables

EXPECTED_ALL = {
    "ActorLost",
    "Backend",
    "BackendError",
    "ConfigError",
    "FailureBudgetExceeded",
    "RateLimitTimeout",
    "InputTypeError",
    "ObjectLost",
    "OptionsError",
    "OutOfMemory",
    "RayRunnablesError",
    "ReadOnlyInputError",
    "Runnable",
    "RunnableAssign",
    "RunnableBinding",
    "RunnableBranch",
    "RunnableCached",
    "RunnableConfig",
    "RunnableEach",
    "RunnableGenerator",
    "RunnableLambda",
    "RunnableParallel",
    "RunnablePassthrough",
    "RunnablePick",
    "RunnableActor",
    "RunnableRateLimited",
    "StepConstructionError",
    "VectorizedOutputError",
    "WorkerLost",
    "RunnableRetry",
    "RunnableSequence",
    "RunnableTimeout",
    "RunnableWithFallbacks",
    "StepRecursionError",
    "UnhashableInputError",
    "UnpicklableOutputError",
    "UnpicklableStepError",
    "UnportableError",
    "__version__",
    "available_backends",
    "cancel_requested",
    "chain",
    "get_backend",
    "item_index_of",
    "register_backend",
    "step_path_of",
    "use",
}


def test_import_does_not_import_ray() -> None:
    code = "import rayrunnables, sys; assert 'ray' not in sys.modules, sorted(m for m in sys.modules if 'ray' in m)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_building_and_running_locally_does_not_import_ray() -> None:
    code = (
        "import rayrunnables as rr, sys\n"
        "step = rr.RunnableLambda(lambda x: [x, x + 1]) | {'a': lambda xs: xs, 'b': rr.RunnableLambda(str).map()}\n"
        "assert step.invoke(1) == {'a': [1, 2], 'b': ['1', '2']}\n"
        "assert step.batch([1]) == [{'a': [1, 2], 'b': ['1', '2']}]\n"
        "print(step.explain())\n"
        "assert 'ray' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_every_name_in_all_exists() -> None:
    missing = [name for name in rayrunnables.__all__ if not hasattr(rayrunnables, name)]
    assert missing == []


def test_all_is_the_expected_public_surface() -> None:
    assert len(rayrunnables.__all__) == len(set(rayrunnables.__all__)), "duplicates in __all__"
    assert set(rayrunnables.__all__) == EXPECTED_ALL


def test_error_hierarchy() -> None:
    rr = rayrunnables
    for cls in (
        rr.InputTypeError,
        rr.ConfigError,
        rr.OptionsError,
        rr.StepRecursionError,
        rr.UnpicklableStepError,
        rr.UnpicklableOutputError,
        rr.UnportableError,
        rr.BackendError,
    ):
        assert issubclass(cls, rr.RayRunnablesError)
    assert issubclass(rr.InputTypeError, TypeError)
    assert issubclass(rr.UnpicklableStepError, TypeError)
    assert issubclass(rr.UnpicklableOutputError, TypeError)
    assert issubclass(rr.ConfigError, ValueError)
    assert issubclass(rr.OptionsError, ValueError)
    assert issubclass(rr.StepRecursionError, RecursionError)
    assert issubclass(rr.BackendError, RuntimeError)


def test_available_backends_lists_local_and_ray() -> None:
    assert {"local", "ray"} <= set(rayrunnables.available_backends())
