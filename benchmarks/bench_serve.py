"""Serving (issue 24): our Ray Serve server vs the same chain on FastAPI + langchain-core in one process.

    python benchmarks/bench_serve.py                    # about 2 minutes on 2 cores
    python benchmarks/bench_serve.py --seconds 5 --rounds 1
    python benchmarks/bench_serve.py --write-results    # also replace the section of benchmarks/RESULTS.md

Everything binds 127.0.0.1. 200 concurrent clients (httpx, one connection each) post ``/invoke`` in a
loop for ``--seconds`` (after a warm-up); each request's latency is recorded and the requests per second
are the successful answers over the window. Two chains:

- ``light``: a dict of branches (prompt | a fake streaming chat model | parser, and prompt | a lambda |
  ``.map()``), the tests' done-means chain: serving overhead dominates. Served twice by us: through the
  Ray backend (each request's steps as Ray tasks, the default) and with ``ServeOptions(backend="local")``
  (steps in the replica's process, as LangServe runs them), which separates Serve's cost from the tasks'.
- ``cpu``: one step of 200,000 sha256 rounds (a fixed amount of CPU, ~65 ms of one core here): our server
  with 2 replicas (the step as Ray tasks, and with ``backend="local"`` in the replicas' own processes) vs
  one process, where the GIL runs one request's CPU at a time.

For the CPU chain, the CPU seconds each process of the server used (``/proc``, over the server's process
tree, warm-up included) are divided by the requests answered in those runs: where a request's time goes.

The baseline is LangServe's own ``add_routes`` on FastAPI under uvicorn in one subprocess, langchain-core
running the chain (the way such a chain was served). Methods are interleaved round by round; the table
gives each one's median over rounds. The machine is shared (other jobs run): see the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import hashlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_core import RESULTS_MD, _loadavg, command_line, environment, write_results  # noqa: E402

HEADING = "Serving a chain (issue 24)"
CLIENTS = 200
ROUNDS = 200_000  # about 65 ms of one core here


# ---- the chains (module-level: the replicas and the baseline import this module) ------------------------
def prompt_words(prompt: Any) -> list[str]:
    return str(prompt.to_string()).split()


def shout(word: str) -> str:
    return word.upper()


def light_chain() -> Any:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda, RunnableParallel

    prompt = ChatPromptTemplate.from_messages([("human", "say {topic}")])
    return RunnableParallel(
        answer=prompt | FakeListChatModel(responses=["one two three"]) | StrOutputParser(),
        words=prompt | RunnableLambda(prompt_words) | RunnableLambda(shout).map(),
    )


def burn(text: str) -> str:
    """A fixed amount of CPU work (``ROUNDS`` sha256 of 32 bytes, holding the GIL): a fixed count, not a
    time, so a starved process does not do less work per request."""
    digest = text.encode()
    for _ in range(ROUNDS):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:8]


def cpu_chain() -> Any:
    from langchain_core.runnables import RunnableLambda

    return RunnableLambda(burn)


INPUTS = {"light": {"topic": "ray serve chains"}, "cpu": "some text"}


# ---- servers -----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_baseline(port: int) -> None:
    """FastAPI + LangServe's add_routes + langchain-core, one uvicorn process (the ``--baseline`` mode)."""
    import uvicorn
    from fastapi import FastAPI
    from langserve import add_routes

    api = FastAPI()
    add_routes(api, light_chain(), path="/light")
    add_routes(api, cpu_chain(), path="/cpu")
    uvicorn.run(api, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start_ours(port: int) -> None:
    import ray
    from ray import serve

    from rayrunnables.backends.ray.backend import LOCAL_RAY_CONFIG
    from rayrunnables.serve import ServeOptions, app

    # the local Ray ``rayrunnables serve`` starts, with its settings
    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
             _system_config=LOCAL_RAY_CONFIG)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app(light_chain(), name="light"), name="light", route_prefix="/light")
    # the same chain with its steps in the replica's own process (backend "local"): Serve's part of the cost
    serve.run(app(light_chain(), name="light-local", options=ServeOptions(backend="local")), name="light-local",
              route_prefix="/light-local")
    serve.run(app(cpu_chain(), name="cpu", replicas=2), name="cpu", route_prefix="/cpu")
    serve.run(app(cpu_chain(), name="cpu-local", replicas=2, options=ServeOptions(backend="local")),
              name="cpu-local", route_prefix="/cpu-local")


def wait_ready(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:g} s")


# ---- CPU seconds per process (Linux /proc; no dependency) -------------------------------------------------
def process_tree_cpu(root: int) -> dict[int, tuple[str, float]]:
    """``pid -> (name, CPU seconds so far)`` for ``root`` and every process below it (Ray's workers are
    the raylet's children, which this process started). Empty where ``/proc`` is missing."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid ... utime stime
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    out: dict[int, tuple[str, float]] = {}
    for pid in cpu:
        up = pid
        while up not in (root, 0, 1) and up in parents:
            up = parents[up]
        if up == root:
            out[pid] = (_process_name(pid, root), cpu[pid])
    return out


def _process_name(pid: int, root: int) -> str:
    """A role, not an instance: Ray's process titles less the method running now (``ray::ProxyActor``,
    ``ray::ServeReplica:cpu:cpu``, ``ray::lambda 'burn'``), else the program's name."""
    if pid == root:
        return "this process (load generator, Ray driver)"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    title = argv[0].decode(errors="replace").strip()
    if title.startswith("ray::"):
        head, _, method = title.partition(".")
        return head if method and " " not in method else title
    if "--baseline" in [a.decode(errors="replace") for a in argv]:
        return "baseline process (uvicorn)"
    names = [Path(a.decode(errors="replace")).name for a in argv[:3]]
    return next((n for n in names if n not in ("python", "python3", "-u", "-m") and n), names[0])


def cpu_used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per role between two ``process_tree_cpu`` snapshots (a process started in between
    counts from zero: a new Ray worker's start-up is part of the cost)."""
    used: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        used[name] = used.get(name, 0.0) + seconds - before.get(pid, (name, 0.0))[1]
    return used


def wait_quiet(root: int, busy_cores: float = 0.3, limit_s: float = 90.0) -> float:
    """Wait until the process tree under ``root`` uses under ``busy_cores`` of CPU over half a second (at
    most ``limit_s``); the seconds waited. Why: the requests still in flight when a run's clients stop
    are abandoned, and a server that runs them to their end (steps in a replica's threads cannot be
    interrupted) would otherwise take CPU from the next server measured."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        before = sum(seconds for _, seconds in process_tree_cpu(root).values())
        time.sleep(0.5)
        if sum(seconds for _, seconds in process_tree_cpu(root).values()) - before < 0.5 * busy_cores:
            break
    return time.monotonic() - start


# ---- load --------------------------------------------------------------------------------------------------
async def load(url: str, payload: Any, seconds: float, warmup: float, clients: int) -> dict[str, float]:
    """``clients`` loops posting ``payload`` for ``warmup + seconds``: the latencies of the requests that
    complete in the last ``seconds``, and how many per second."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float] = []
    failures = answered = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        async def one_client() -> None:
            nonlocal failures, answered
            while True:
                sent = time.perf_counter()
                try:
                    answer = await client.post(url, json={"input": payload})
                    ok = answer.status_code == 200
                except httpx.HTTPError:
                    ok = False
                done = time.perf_counter()
                if done > stop_at:
                    return
                answered += ok
                if done >= measure_from:  # what completes in the window counts, whenever it was sent
                    if ok:
                        latencies.append(done - sent)
                    else:
                        failures += 1

        tasks = [asyncio.ensure_future(one_client()) for _ in range(clients)]
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        for task in tasks:  # what is still in flight at the end is not waited for
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    latencies.sort()
    if not latencies:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "rps": 0.0, "failures": float(failures),
                "answered": float(answered)}
    return {"p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "rps": len(latencies) / seconds, "failures": float(failures),
            "answered": float(answered)}  # warm-up included: what the CPU seconds are divided by


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def cpu_table(cpu_by_role: dict[str, dict[str, float]], alone_ms: float) -> list[str]:
    """Where a CPU-chain request's time went: CPU ms per request of each process role, per server."""
    names = {"ours": "Ray tasks, 2 replicas", "ours-local": "backend local, 2 replicas", "baseline": "one process"}
    servers = [who for who in ("ours", "ours-local", "baseline") if who in cpu_by_role]
    roles: dict[str, None] = {}
    for who in servers:
        roles.update((role, None) for role, used in sorted(cpu_by_role[who].items(), key=lambda kv: -kv[1])
                     if role != "answered")
    rows = [f"CPU ms per answered request of the CPU chain ({alone_ms:.0f} ms of CPU alone), by process, all "
            "rounds, warm-up included:", "",
            "| process | " + " | ".join(names[w] for w in servers) + " |", "|---|" + "---:|" * len(servers)]
    total = dict.fromkeys(servers, 0.0)
    for role in roles:
        cells = []
        for who in servers:
            per = 1000 * cpu_by_role[who].get(role, 0.0) / max(1.0, cpu_by_role[who]["answered"])
            total[who] += per
            cells.append(f"{per:.1f}" if per >= 0.05 else "")
        if any(cells):
            rows.append(f"| {role.replace('|', '/')} | " + " | ".join(cells) + " |")
    rows.append("| **all** | " + " | ".join(f"**{total[w]:.1f}**" for w in servers) + " |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per run (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before it (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument("--only", choices=["ours", "baseline"], default=None, help="one server (diagnosis)")
    parser.add_argument("--baseline", type=int, default=None, help=argparse.SUPPRESS)  # the subprocess's mode
    args = parser.parse_args(argv)
    if args.baseline is not None:
        run_baseline(args.baseline)
        return 0
    if args.seconds > 60 or args.rounds > 5 or args.clients > 500:
        parser.error("bounded: at most 60 s per run, 5 rounds and 500 clients")

    env = environment()
    start = time.process_time()
    burn("calibrate")
    cpu_ms = 1000 * (time.process_time() - start)
    ours_port, base_port = free_port(), free_port()
    baseline = subprocess.Popen([sys.executable, __file__, "--baseline", str(base_port)], cwd=HERE)
    try:
        start_ours(ours_port)
        wait_ready(f"http://127.0.0.1:{ours_port}/light/input_schema")
        wait_ready(f"http://127.0.0.1:{base_port}/light/input_schema")
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        cpu_by_role: dict[str, dict[str, float]] = {}  # server -> role -> CPU seconds, CPU chain, all rounds
        wait_quiet(os.getpid())  # the servers' start-up (replicas importing) is over
        for rnd in range(args.rounds):
            for chain in ("light", "cpu"):
                servers = [("ours", ours_port, chain), ("ours-local", ours_port, f"{chain}-local"),
                           ("baseline", base_port, chain)]
                for who, port, route in servers:
                    if args.only not in (None, who.partition("-")[0]):
                        continue
                    url = f"http://127.0.0.1:{port}/{route}/invoke"
                    before = process_tree_cpu(os.getpid())
                    got = asyncio.run(load(url, INPUTS[chain], args.seconds, args.warmup, args.clients))
                    if chain == "cpu":
                        roles = cpu_by_role.setdefault(who, {"answered": 0.0})
                        roles["answered"] += got["answered"]
                        for role, used in cpu_used(before, process_tree_cpu(os.getpid())).items():
                            roles[role] = roles.get(role, 0.0) + used
                    results.setdefault((chain, who), []).append(got)
                    got["drain_s"] = wait_quiet(os.getpid())
                    print(f"round {rnd + 1} {chain:5s} {who:8s} p50 {got['p50_ms']:7.1f} ms  p99 "
                          f"{got['p99_ms']:7.1f} ms  {got['rps']:7.1f} req/s  failures {got['failures']:.0f}  "
                          f"quiet after {got['drain_s']:.1f} s", flush=True)
    finally:
        baseline.send_signal(signal.SIGINT)
        try:
            baseline.wait(30)
        except subprocess.TimeoutExpired:
            baseline.kill()
        try:
            from ray import serve

            serve.shutdown()
        except Exception:
            pass

    if args.only:
        return 0
    med = {key: median_of(runs) for key, runs in results.items()}
    rows = [
        "| chain | server | p50 latency | p99 latency | requests/s | failed requests |",
        "|---|---|---:|---:|---:|---:|",
    ]
    names = {"ours": "rayrunnables.serve on Ray Serve, steps as Ray tasks",
             "ours-local": "rayrunnables.serve on Ray Serve, steps in the replica (backend local)",
             "baseline": "FastAPI + LangServe + langchain-core, 1 process"}
    cpu_label = f"cpu ({ROUNDS:,} sha256 rounds: {cpu_ms:.0f} ms of CPU alone)"
    for chain, label in (("light", "light (dict, model, `.map()`)"), ("cpu", cpu_label)):
        for who in ("ours", "ours-local", "baseline"):
            if (chain, who) not in med:
                continue
            m = med[(chain, who)]
            server = names[who] + (", 2 replicas" if chain == "cpu" and who != "baseline" else "")
            rows.append(f"| {label} | {server} | {m['p50_ms']:.1f} ms | {m['p99_ms']:.1f} ms | {m['rps']:.1f} "
                        f"| {m['failures']:.0f} |")
    ours_cpu, base_cpu = med[("cpu", "ours")]["rps"], med[("cpu", "baseline")]["rps"]
    local_cpu = med[("cpu", "ours-local")]["rps"]
    notes = [
        f"CPU chain, 2 replicas vs one process (target: more requests/s): steps as Ray tasks {ours_cpu:.1f} vs "
        f"{base_cpu:.1f} ({'met' if ours_cpu > base_cpu else 'NOT met'}), steps in the replicas (backend local) "
        f"{local_cpu:.1f} vs {base_cpu:.1f} ({'met' if local_cpu > base_cpu else 'NOT met'}) on this run. Load "
        f"average at the end: {_loadavg()} (our own servers' threads count in it). The load generator shares "
        "the 2 cores with every server.",
        "",
        *cpu_table(cpu_by_role, cpu_ms),
        "",
        "How to read the CPU table: a request's cost is the sum of its column, spread over 2 cores that the "
        "load generator shares; the single process can use only one core for the chain (the GIL), so it "
        "answers at most about 1000 / (its uvicorn row) requests/s, and 2 replicas at most about 2000 / (the "
        "sum of their column). `this process` is the load generator (httpx: its pool scans every connection "
        "for each request) and the Ray driver. Ray's own processes (controller, GCS, log monitor, dashboard "
        "agent) use CPU whatever the load; divided by the requests, they look larger when fewer are answered. "
        "Names are read at the end of a run, so `ray::IDLE` is a Ray worker that was between tasks then (or "
        "had just started): its CPU is the step's work and the worker's own, to add to the step's row.",
        "",
        "The fixed 4.0 req/s of earlier runs was Ray Serve's router, not the chain: with every replica full (200 "
        "clients, 64 requests per replica then), the proxy queues requests and at most 2 routing tasks per "
        "replica hand them out, polling full replicas with a backoff that grows to 0.5 s and is not reset "
        "when a slot frees (the slot goes to the oldest queued request, not the polling task's own): 2 requests "
        "per 0.5 s per replica, whatever the replica could do. Reproduced with a FastAPI app that only answers; "
        "8 req/s with Serve's `RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S=0.25`, none with 0.05. Replicas now take "
        "256 requests at once (`--max-ongoing-requests`), so the proxy queues only past that, and the router "
        "looks again within 50 ms (`request_router_config.max_backoff_s`). The same stall had held the CPU "
        "chain through Ray tasks at 4 routing tasks per 0.5 s (8 req/s, ~9.7 measured), and Ray reaped and "
        "restarted the idle task workers in between.",
        "",
        'Steps as Ray tasks: while more workers exist than CPUs (every Serve replica and the proxy is one), '
        'Ray stops a task worker idle for a second, and a new one costs about a second of CPU (`ray::IDLE`). '
        "The local Ray that `rayrunnables serve` starts, and this benchmark's, keep idle workers 60 s "
        "(`LOCAL_RAY_CONFIG`): with Ray's 1 s the CPU chain through Ray tasks did 8.6 and 15.8 req/s "
        '(2026-12-05 06:03 UTC; its Ray session started 39 worker processes and 21 exited as idle, by the '
        'raylet and worker logs), with 60 s 19.4 and 18.7 (06:21, `--only ours`; 17 and 5). The CPU of a '
        'worker that exited is missing from the table. Beside that, a request through Ray tasks costs CPU in '
        'its replica (planning, submitting and awaiting the task), the proxy and the raylet that a replica '
        'with `backend="local"` does not spend: the Ray backend (the default) is for steps that need the '
        'cluster (actor pools, GPUs, a `.map()` over many items) and for stopping a running step when its '
        'client leaves; a chain whose request fits one core is served with least overhead by `--backend '
        'local`.',
        "",
        "A latency longer than warm-up + window (the request still in flight at the end) is not counted, so "
        "p99 is capped near that length. Each run starts once the servers are quiet again: requests abandoned "
        "at a run's end are run to their end by steps in a replica's threads (no Ray task to cancel). With "
        "`backend=\"local\"`, requests of a chain known to compute take turns in a replica "
        "(`ServeOptions.computing_slots`); through the Ray backend each light request is still three or more "
        "small tasks (the two fused branches, the `.map()`'s chunks).",
    ]
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"## {HEADING}", "", f"Measured {now} with `{command_line('bench_serve.py')}`"
            f" ({args.clients} clients, {args.rounds} interleaved rounds of {args.warmup:g} s warm-up + "
            f"{args.seconds:g} s measured per server and chain; medians over rounds).", "", *env, "", *rows, "",
            *notes, ""]
    print("\n".join(body))
    if args.write_results:
        write_results(RESULTS_MD, HEADING, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
