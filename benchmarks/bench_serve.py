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
  with 2 replicas (the step runs as Ray tasks) vs one process, where the GIL runs one request's CPU at a
  time.

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

    from rayrunnables.serve import ServeOptions, app

    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app(light_chain(), name="light"), name="light", route_prefix="/light")
    # the same chain with its steps in the replica's own process (backend "local"): Serve's part of the cost
    serve.run(app(light_chain(), name="light-local", options=ServeOptions(backend="local")), name="light-local",
              route_prefix="/light-local")
    serve.run(app(cpu_chain(), name="cpu", replicas=2), name="cpu", route_prefix="/cpu")


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


# ---- load --------------------------------------------------------------------------------------------------
async def load(url: str, payload: Any, seconds: float, warmup: float, clients: int) -> dict[str, float]:
    """``clients`` loops posting ``payload`` for ``warmup + seconds``: the latencies of the requests that
    complete in the last ``seconds``, and how many per second."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float] = []
    failures = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        async def one_client() -> None:
            nonlocal failures
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
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "rps": 0.0, "failures": float(failures)}
    return {"p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "rps": len(latencies) / seconds, "failures": float(failures)}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


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
        for rnd in range(args.rounds):
            for chain in ("light", "cpu"):
                servers = [("ours", ours_port, chain), ("baseline", base_port, chain)]
                if chain == "light":
                    servers.insert(1, ("ours-local", ours_port, "light-local"))
                for who, port, route in servers:
                    if args.only not in (None, who):
                        continue
                    url = f"http://127.0.0.1:{port}/{route}/invoke"
                    got = asyncio.run(load(url, INPUTS[chain], args.seconds, args.warmup, args.clients))
                    results.setdefault((chain, who), []).append(got)
                    print(f"round {rnd + 1} {chain:5s} {who:8s} p50 {got['p50_ms']:7.1f} ms  p99 "
                          f"{got['p99_ms']:7.1f} ms  {got['rps']:7.1f} req/s  failures {got['failures']:.0f}",
                          flush=True)
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
            server = names[who] + (", 2 replicas" if (chain, who) == ("cpu", "ours") else "")
            rows.append(f"| {label} | {server} | {m['p50_ms']:.1f} ms | {m['p99_ms']:.1f} ms | {m['rps']:.1f} "
                        f"| {m['failures']:.0f} |")
    ours_cpu, base_cpu = med[("cpu", "ours")]["rps"], med[("cpu", "baseline")]["rps"]
    notes = [
        f"CPU chain, 2 replicas vs one process: {ours_cpu:.1f} vs {base_cpu:.1f} requests/s (target: more): "
        f"{'met' if ours_cpu > base_cpu else 'NOT met'} on this run. Load average at the end: {_loadavg()}. The "
        "machine was shared with other jobs (2 cores): Serve adds a proxy and a replica process per request "
        "path, and each request's steps are Ray tasks, which all compete for the same 2 cores here.",
        "",
        "A latency longer than warm-up + window (the request still in flight at the end) is not counted, so "
        "p99 is capped near that length. Through the Ray backend each light request is still three or more "
        "small tasks (the two fused branches, the `.map()`'s chunks); its `.map()` runs its scheduler in a "
        "map task only while this replica has fewer than the cluster's CPUs of them running, else in the "
        "replica's thread (`MapSlots`): a map task holds no CPU, so Ray started a worker process per "
        "concurrent one, which was most of the CPU here (1-2 req/s before). `--backend local` (steps in the "
        "replica) remains the setting for a chain of only cheap steps.",
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
