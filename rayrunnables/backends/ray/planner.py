"""Node tree -> units of work. Pure: reads nodes, never runs them.

The plan says, for a backend that runs steps in other processes, which adjacent steps fuse into one
task, where a dict fans out, where a list is cut into chunks, and where the driver must wait for a
value (a *barrier*). ``explain`` prints it so a person sees where every step runs before it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...config import merge_configs
from ...engine.steps import step_tree
from ...protocols import Node
from ...runnables.actor import RunnableActor
from ...runnables.each import RunnableEach
from ...runnables.lambda_ import RunnableLambda
from ...runnables.parallel import RunnableParallel
from ...runnables.passthrough import RunnableAssign, RunnablePassthrough, RunnablePick
from ...runnables.sequence import RunnableSequence
from ...runnables.wrappers import RunnableBinding

__all__ = ["Task", "Seq", "Fan", "Assign", "Map", "Pass", "Pick", "RunOf", "Unit", "plan", "explain", "task_options"]


@dataclass
class Task:
    """Steps run one after the other inside one task (fused); ``where='driver'`` for io_bound steps,
    ``'actor'`` for a stateful step served by its actor pool."""

    steps: list[tuple[tuple[str, ...], Node]]
    options: dict[str, Any]
    where: str = "worker"
    config: dict[str, Any] = field(default_factory=dict)  # from enclosing ``with_config`` bindings

    @property
    def name(self) -> str:
        first_path, first = self.steps[0]
        if len(self.steps) == 1:
            return "/".join((*first_path, first.label()))
        last_path, _ = self.steps[-1]
        prefix = "/".join(first_path[:-1])
        labels = " | ".join(step.label() for _, step in self.steps)
        span = f"{first_path[-1]}-{last_path[-1].split()[-1]}" if first_path else "steps"
        return f"{prefix + '/' if prefix else ''}{span} ({labels})"


@dataclass
class Seq:
    parts: list[Unit]


@dataclass
class Fan:
    path: tuple[str, ...]
    keys: list[str]
    branches: list[Unit]


@dataclass
class Assign:
    path: tuple[str, ...]
    mapper: Unit
    node: Node


@dataclass
class Map:
    path: tuple[str, ...]
    node: RunnableEach[Any, Any]
    options: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pass:
    path: tuple[str, ...]


@dataclass
class Pick:
    path: tuple[str, ...]
    node: RunnablePick


@dataclass
class RunOf:
    """A step's own run around the plan of its parts, when someone records run events: the driver reports
    its start and end, the runs inside are recorded where they run (``rayrunnables.backends.ray.recording``)."""

    node: Node
    path: tuple[str, ...]
    inner: Unit
    run_name: str | None = None


Unit = Task | Seq | Fan | Assign | Map | Pass | Pick | RunOf


def plan(
    node: Node,
    path: tuple[str, ...] = (),
    options: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    recording: bool = False,
) -> Unit:
    """``recording``: someone records run events, so each step that is a run of its own and is not run
    whole inside one task (a sequence, a dict, a ``.map()``...) is wrapped in a ``RunOf``."""
    opts, cfg = options or {}, config or {}
    if isinstance(node, RunnableBinding):
        inner_opts = {**opts, **node.options}
        if node.listeners is not None or node.config.get("max_concurrency") or node.config.get("callbacks"):
            # a cap of its own is a scope that must hold every call inside it: one task runs it whole
            return Task([(path, node)], inner_opts, "worker", cfg)
        # tags, metadata, run_name, configurable: carried to every task inside, structure kept
        return plan(node.bound, path, inner_opts, merge_configs(cfg, node.config), recording)
    unit = _plan_step(node, path, opts, {k: v for k, v in cfg.items() if k != "run_name"} if recording else cfg,
                      recording)
    runs_whole = isinstance(unit, Task) and len(unit.steps) == 1 and unit.steps[0][1] is node
    if recording and not runs_whole:  # its parts run apart: its own run is reported by the driver
        return RunOf(node, path, unit, cfg.get("run_name"))
    if recording and isinstance(unit, Task) and "run_name" in cfg:
        unit.config = {**unit.config, "run_name": cfg["run_name"]}  # the step's own run takes the name
    return unit


def _plan_step(node: Node, path: tuple[str, ...], opts: dict[str, Any], cfg: dict[str, Any], recording: bool) -> Unit:
    if isinstance(node, (RunnableSequence, RunnableParallel, RunnableEach)) and node.name:
        path = (*path, f"'{node.name}'")  # as ``Runnable.scope`` does in-process
    if isinstance(node, RunnableSequence):
        parts: list[Unit] = []
        for segment, step in node.children():
            part = plan(step, (*path, segment), opts, cfg, recording)
            previous = parts[-1] if parts else None
            if (
                isinstance(part, Task)
                and isinstance(previous, Task)
                and previous.options == part.options
                and previous.config == part.config
                and previous.where == part.where == "worker"
            ):
                previous.steps.extend(part.steps)  # fusion: adjacent steps with the same options
            else:
                parts.append(part)
        return parts[0] if len(parts) == 1 else Seq(parts)
    if isinstance(node, RunnableParallel):
        kids = node.children()
        return Fan(path, list(node.steps), [plan(step, (*path, seg), opts, cfg, recording) for seg, step in kids])
    if isinstance(node, RunnableAssign):
        return Assign(path, plan(node.mapper, (*path, "assign"), opts, cfg, recording), node)
    if isinstance(node, RunnableEach):
        # chunk tasks must meet what the mapped step asks for (``step.with_options(...).map()``)
        inner = task_options(plan(node.bound, path, opts, cfg))
        return Map(path, node, {**opts, **inner}, cfg)
    if isinstance(node, RunnablePassthrough) and node.func is None:
        return Pass(path)
    if isinstance(node, RunnablePick):
        return Pick(path, node)
    if isinstance(node, RunnableActor):
        return Task([(path, node)], opts, "actor", cfg)
    # io_bound steps and async functions wait in driver threads: no CPU slot or worker held per wait
    waits = opts.get("io_bound") or (isinstance(node, RunnableLambda) and node.is_async) or (
        "io_bound" not in opts and node.waits)
    return Task([(path, node)], opts, "driver" if waits else "worker", cfg)


def task_options(unit: Unit) -> dict[str, Any]:
    """Options a single task running all of ``unit`` needs: the most of each step's resources."""
    found: list[dict[str, Any]] = []

    def walk(u: Unit) -> None:
        if isinstance(u, Task):
            found.append(u.options)
        elif isinstance(u, Seq):
            for p in u.parts:
                walk(p)
        elif isinstance(u, Fan):
            for b in u.branches:
                walk(b)
        elif isinstance(u, Assign):
            walk(u.mapper)
        elif isinstance(u, Map):
            walk(plan(u.node.bound, u.path, u.options))
        elif isinstance(u, RunOf):
            walk(u.inner)

    walk(unit)
    merged: dict[str, Any] = {}
    for opts in found:
        for key, value in opts.items():
            if key in ("num_cpus", "num_gpus", "memory"):
                merged[key] = max(merged.get(key, 0), value)
            elif key == "resources":
                res = dict(merged.get("resources", {}))
                for name, amount in value.items():
                    res[name] = max(res.get(name, 0), amount)
                merged[key] = res
            else:
                merged.setdefault(key, value)
    return merged


def _fmt_opts(options: dict[str, Any]) -> str:
    return f"  options={options}" if options else ""


def _units(unit: Unit, depth: int, lines: list[str]) -> None:
    pad = "  " * depth
    if isinstance(unit, Task):
        where = {"driver": "driver thread (io_bound)", "actor": "actor pool call"}.get(unit.where, "task")
        fused = f", {len(unit.steps)} steps fused" if len(unit.steps) > 1 else ""
        lines.append(f"{pad}{where} {unit.name!r}{fused}{_fmt_opts(unit.options)}")
    elif isinstance(unit, Seq):
        lines.append(f"{pad}sequence: each part gets the previous part's ObjectRef (no driver wait)")
        for part in unit.parts:
            _units(part, depth + 1, lines)
    elif isinstance(unit, Fan):
        lines.append(f"{pad}fan-out {'/'.join(unit.path) or 'parallel'}: input put once, all branches launched")
        for key, branch in zip(unit.keys, unit.branches, strict=False):
            lines.append(f"{pad}  [{key!r}]")
            _units(branch, depth + 2, lines)
    elif isinstance(unit, Assign):
        lines.append(f"{pad}assign at {'/'.join(unit.path) or 'root'}: new keys merged where consumed")
        _units(unit.mapper, depth + 1, lines)
    elif isinstance(unit, Map):
        lines.append(
            f"{pad}map {'/'.join(unit.path) or 'root'}: chunk tasks of {unit.node.bound.label()}, scheduled as"
            f" batch is (adaptive chunks, a window, deadlines, backups) by a map task beside the list"
            f"{_fmt_opts(unit.options)}"
        )
    elif isinstance(unit, Pass):
        lines.append(f"{pad}passthrough (no task)")
    elif isinstance(unit, Pick):
        lines.append(f"{pad}{unit.node.label()} (no task: applied where the value is consumed)")


def explain(node: Node) -> str:
    """The chain's steps, then the tasks the Ray backend will submit for it."""
    lines = ["steps:", *step_tree(node), "on ray:"]
    _units(plan(node), 1, lines)
    return "\n".join(lines)
