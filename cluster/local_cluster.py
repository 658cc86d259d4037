#!/usr/bin/env python3
"""Start a real multi-node Ray cluster on this machine, and stop exactly what was started.

    python cluster/local_cluster.py start [--workers 2] [--cpus 1] [--node-resources 2='{"gpu_node": 1}']
    python cluster/local_cluster.py status
    python cluster/local_cluster.py add-node [--cpus 1]        # one more worker node
    python cluster/local_cluster.py kill-node INDEX            # SIGKILL one node (fault drills)
    python cluster/local_cluster.py stop

Every node is one ``ray start --block`` process (its own process group) with its own ``--temp-dir``,
its own block of ports (GCS, node manager, object manager, agents, metrics, worker ports), its own
``--num-cpus`` and ``--resources``. Token authentication is on (``RAY_AUTH_MODE=token``) with a fresh
256-bit token in a file only its owner can read; the dashboard (which serves the Jobs API) listens on
127.0.0.1 only. The pids, process start times, ports and paths go to ``STATE_DIR/state.json``; ``stop``
signals those processes and their descendants and nothing else, so other Ray instances on this machine
(a test suite's, another user's) are untouched. ``ray stop`` would kill them all.

What "bound to 127.0.0.1" can and cannot mean with Ray: we pass ``--node-ip-address=127.0.0.1``, but
Ray rewrites a loopback node IP to this machine's routable address (``resolve_ip_for_localhost``), and
its gRPC servers (GCS, raylets, object managers, workers) listen on every interface. The dashboard and
the Ray Client server do honour 127.0.0.1. So the token is what guards the cluster's core ports here;
on a shared network, also firewall the port block (see cluster/README.md).

Only the standard library is imported; the ``ray`` command next to this Python is used to start nodes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["add_node", "kill_node", "load_state", "start", "status", "stop"]

DEFAULT_STATE_DIR = Path(tempfile.gettempdir()) / "rayrunnables-cluster"
PORTS_PER_NODE = 100  # node i owns [base + 100 i, base + 100 i + 99]
# Below Linux's ephemeral range (32768+), and above Ray's default worker ports (10002-19999), so
# neither random ports of other processes nor another default Ray instance land in our blocks.
PORT_RANGE = (20000, 32000)
_OFFSETS = {
    "gcs": 0, "node_manager": 1, "object_manager": 2, "agent_http": 3, "agent_grpc": 4,
    "metrics": 5, "runtime_env_agent": 6, "dashboard": 7, "client_server": 8,
}
_WORKER_PORTS = (20, 99)
_READY_TEXT = "Ray runtime started"


# ---- processes ------------------------------------------------------------------------------------------------
def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (guards against a reused pid), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has finished: reap it if it is our child
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return None
    return int(fields[19])


def _alive(pid: int, start_time: int | None = None) -> bool:
    now = _start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _node_processes(node: dict[str, Any]) -> list[int]:
    """The node's ``ray start`` process, everything it started (raylet, agents, workers), and its group."""
    pid = node["pid"]
    pids = {pid, *_descendants(pid)} if _alive(pid, node["start_time"]) else set()
    for entry in Path("/proc").iterdir():  # processes left in the node's group by a dead parent
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == node["pgid"]:
                    pids.add(int(entry.name))
    return sorted(pids)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if _alive(p)]
    return left


# ---- ports and files -------------------------------------------------------------------------------------------
def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))  # Ray's gRPC servers bind every interface
        except OSError:
            return False
    return True


def _block_free(start: int) -> bool:
    return all(_port_free(p) for p in range(start, start + PORTS_PER_NODE))


def _pick_base(n_nodes: int) -> int:
    low, high = PORT_RANGE
    bases = list(range(low, high - PORTS_PER_NODE * n_nodes, PORTS_PER_NODE))
    random.shuffle(bases)
    for base in bases[:200]:
        if all(_block_free(base + PORTS_PER_NODE * i) for i in range(n_nodes)):
            return base
    raise RuntimeError(f"no free block of {PORTS_PER_NODE * n_nodes} ports in {low}-{high}")


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable and writable by its owner only (0600) before a byte is written."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _ray_command() -> list[str]:
    ray_cli = Path(sys.executable).with_name("ray")
    if ray_cli.exists():
        return [str(ray_cli)]
    return [sys.executable, "-m", "ray.scripts.scripts"]


def load_state(state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR) -> dict[str, Any]:
    path = Path(state_dir) / "state.json"
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"no cluster state at {path}: nothing was started with this --state-dir") from None
    return state


def _save_state(state: dict[str, Any]) -> None:
    path = Path(state["state_dir"]) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def client_env(state: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a driver needs for this cluster: its address, token mode and token file."""
    env = dict(os.environ if base is None else base)
    env.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the token file
    env.update(RAY_ADDRESS=state["address"], RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=state["token_path"])
    return env


# ---- nodes ---------------------------------------------------------------------------------------------------
def _node_args(state: dict[str, Any], index: int, cpus: float, resources: dict[str, float]) -> tuple[list[str], dict]:
    base = state["base_port"] + PORTS_PER_NODE * index
    ports = {name: base + off for name, off in _OFFSETS.items()}
    head = index == 0
    args = [
        *_ray_command(), "start", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={cpus:g}",
        f"--resources={json.dumps(resources)}",
        f"--object-store-memory={state['object_store_mb'] * 1024 * 1024}",
        f"--temp-dir={Path(state['state_dir']) / f'n{index}'}",
        f"--node-manager-port={ports['node_manager']}",
        f"--object-manager-port={ports['object_manager']}",
        f"--dashboard-agent-listen-port={ports['agent_http']}",
        f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
        f"--metrics-export-port={ports['metrics']}",
        f"--runtime-env-agent-port={ports['runtime_env_agent']}",
        f"--min-worker-port={base + _WORKER_PORTS[0]}",
        f"--max-worker-port={base + _WORKER_PORTS[1]}",
    ]
    if head:
        args += [
            "--head", f"--port={ports['gcs']}",
            f"--ray-client-server-port={ports['client_server']}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
            f"--include-dashboard={'true' if state['dashboard'] else 'false'}",
        ]
    else:
        args.append(f"--address={state['address']}")
    return args, ports


def _launch(state: dict[str, Any], index: int, cpus: float, resources: dict[str, float]) -> dict[str, Any]:
    args, ports = _node_args(state, index, cpus, resources)
    log = Path(state["state_dir"]) / f"node{index}.log"
    env = dict(os.environ)
    for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(var, None)
    env.update(
        # jobs' entrypoints (`python`, `rayrunnables`) resolve to this Python's environment
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=state["token_path"],
        RAY_USAGE_STATS_ENABLED="0",
        # SIGTERM stops a node at once; the default drains for up to 30 s, which only serves Ray Serve
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        **state["extra_env"],
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # its own process group: stop signals only it
    return {
        "index": index, "role": "head" if index == 0 else "worker", "pid": proc.pid, "pgid": proc.pid,
        "start_time": _start_time(proc.pid), "num_cpus": cpus, "resources": resources, "ports": ports,
        "log": str(log), "temp_dir": str(Path(state["state_dir"]) / f"n{index}"),
    }


def _wait_ready(nodes: list[dict[str, Any]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(nodes)
    while waiting:
        for node in list(waiting):
            text = Path(node["log"]).read_text(errors="replace")
            if _READY_TEXT in text:
                waiting.remove(node)
            elif not _alive(node["pid"], node["start_time"]):
                raise RuntimeError(f"node {node['index']} exited while starting; {node['log']}:\n{text[-3000:]}")
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"nodes {[n['index'] for n in waiting]} not started after {timeout:.0f} s; "
                               f"see {[n['log'] for n in waiting]}")
        time.sleep(0.2)


def _parse_resources(specs: list[str]) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for spec in specs:
        index, sep, value = spec.partition("=")
        if not sep or not index.isdigit():
            raise SystemExit(f"--node-resources expects INDEX=JSON (0 = head), got {spec!r}")
        out[int(index)] = {k: float(v) for k, v in json.loads(value).items()}
    return out


def start(
    workers: int = 2, cpus: float = 1, head_cpus: float | None = None,
    node_resources: dict[int, dict[str, float]] | None = None,
    state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR, base_port: int | None = None,
    object_store_mb: int = 256, dashboard: bool = True, extra_env: dict[str, str] | None = None,
    timeout: float = 180,
) -> dict[str, Any]:
    """Start a head and ``workers`` worker nodes; return the state (also written to STATE_DIR/state.json).

    On any failure everything started so far is stopped before the error propagates."""
    state_path = Path(state_dir)
    if (state_path / "state.json").exists():
        old = load_state(state_path)
        if any(_alive(n["pid"], n["start_time"]) for n in old["nodes"]):
            raise SystemExit(f"a cluster from {state_path} is still running: stop it first")
    if len(str(state_path / "n00" / "session_2026-01-01_00-00-00_000000_0000000/sockets/plasma_store")) > 107:
        raise SystemExit(f"--state-dir {state_path} is too long for Unix socket paths: use a short one under /tmp")
    state_path.mkdir(parents=True, exist_ok=True)
    os.chmod(state_path, 0o700)
    resources = node_resources or {}
    n_nodes = workers + 1
    base = base_port if base_port is not None else _pick_base(n_nodes)
    token_path = state_path / "token"
    _write_private(token_path, secrets.token_hex(32))  # 256 bits, like `ray get-auth-token --generate`
    gcs = base + _OFFSETS["gcs"]
    state: dict[str, Any] = {
        "state_dir": str(state_path), "base_port": base, "address": f"127.0.0.1:{gcs}",
        "dashboard_url": f"http://127.0.0.1:{base + _OFFSETS['dashboard']}" if dashboard else None,
        "client_url": f"ray://127.0.0.1:{base + _OFFSETS['client_server']}",
        "token_path": str(token_path), "object_store_mb": object_store_mb, "dashboard": dashboard,
        "extra_env": dict(extra_env or {}), "nodes": [],
    }
    try:
        head = _launch(state, 0, cpus if head_cpus is None else head_cpus, resources.get(0, {}))
        state["nodes"].append(head)
        _save_state(state)
        _wait_ready([head], timeout)
        for index in range(1, n_nodes):  # one after the other: on a busy machine, side by side times out
            _start_worker(state, index, cpus, resources.get(index, {}), timeout)
    except BaseException:
        if state["nodes"]:
            _save_state(state)
            stop(state_path, keep=True)
        raise
    return state


def add_node(
    state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR, cpus: float = 1,
    resources: dict[str, float] | None = None, timeout: float = 180,
) -> dict[str, Any]:
    """Start one more worker node in a running cluster; returns its record."""
    state = load_state(state_dir)
    index = max(n["index"] for n in state["nodes"]) + 1
    start_port = state["base_port"] + PORTS_PER_NODE * index
    if not _block_free(start_port):
        raise RuntimeError(f"ports {start_port}-{start_port + PORTS_PER_NODE - 1} for node {index} are taken")
    return _start_worker(state, index, cpus, resources or {}, timeout)


def _start_worker(
    state: dict[str, Any], index: int, cpus: float, resources: dict[str, float], timeout: float
) -> dict[str, Any]:
    """Start worker node ``index`` and wait for it; one retry, because Ray gives a raylet only 30 s to
    register with the GCS (node.py), which a loaded 2-core machine can miss."""
    for attempt in (1, 2):
        node = _launch(state, index, cpus, resources)
        state["nodes"] = [n for n in state["nodes"] if n["index"] != index] + [node]
        _save_state(state)
        try:
            _wait_ready([node], timeout)
            return node
        except RuntimeError as exc:
            pids = _node_processes(node)
            _signal(pids, signal.SIGKILL)
            _wait_gone(pids, 10)
            shutil.rmtree(node["temp_dir"], ignore_errors=True)
            if attempt == 2:
                raise
            print(f"node {index} failed to start, retrying once: {str(exc)[:300]}", file=sys.stderr)
    raise AssertionError("unreachable")


def kill_node(index: int, state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR) -> list[int]:
    """SIGKILL one node, raylet and workers included, as if its machine died; returns the pids killed."""
    state = load_state(state_dir)
    node = next((n for n in state["nodes"] if n["index"] == index), None)
    if node is None:
        raise SystemExit(f"no node {index} in {state_dir}")
    pids = _node_processes(node)
    _signal(pids, signal.SIGKILL)
    _wait_gone(pids, 10)
    return pids


def stop(state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR, keep: bool = False, grace: float = 20) -> list[int]:
    """Stop every node this state dir started (workers first), nothing else; returns the pids signalled."""
    state = load_state(state_dir)
    nodes = sorted(state["nodes"], key=lambda n: n["index"] == 0)  # the head last
    signalled: list[int] = []
    for node in nodes:
        pids = _node_processes(node)
        if pids:
            _signal([node["pid"]], signal.SIGTERM)  # `ray start --block` stops its own processes
            signalled += pids
    left = _wait_gone(signalled, grace)
    if left:  # whatever ignored SIGTERM, and workers orphaned by their raylet
        _signal(left, signal.SIGKILL)
        left = _wait_gone(left, 10)
    if not keep:
        for node in state["nodes"]:
            shutil.rmtree(node["temp_dir"], ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            Path(state["token_path"]).unlink()
    if left:
        raise RuntimeError(f"processes still running after SIGKILL: {left}")
    return signalled


def status(state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR) -> list[dict[str, Any]]:
    state = load_state(state_dir)
    return [
        {"index": n["index"], "role": n["role"], "pid": n["pid"], "alive": _alive(n["pid"], n["start_time"]),
         "num_cpus": n["num_cpus"], "resources": n["resources"]}
        for n in state["nodes"]
    ]


def _print_started(state: dict[str, Any]) -> None:
    sd = state["state_dir"]
    lines = [
        f"Ray cluster with {len(state['nodes'])} nodes started (state: {sd}/state.json, logs: {sd}/node*.log)",
        "",
        "Connect a driver (token auth is on; the token file is readable by you only):",
        f"  export RAY_ADDRESS={state['address']}",
        "  export RAY_AUTH_MODE=token",
        f"  export RAY_AUTH_TOKEN_PATH={state['token_path']}",
        "  rayrunnables run MODULE:ATTR --input docs.jsonl --output out.jsonl --backend ray",
    ]
    if state["dashboard_url"]:
        lines += [
            "",
            f"Jobs API / dashboard (127.0.0.1 only): {state['dashboard_url']}",
            f"  ray job submit --address {state['dashboard_url']} --working-dir . -- rayrunnables run ...",
        ]
    lines += ["", f"Stop exactly this cluster:  python {Path(__file__).as_posix()} stop --state-dir {sd}"]
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR),
                        help=f"where the state, token and logs go (default {DEFAULT_STATE_DIR})")
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", parents=[common], help="start a head and N worker nodes")
    p_start.add_argument("--workers", type=int, default=2, help="worker nodes besides the head (default 2)")
    p_start.add_argument("--cpus", type=float, default=1, help="--num-cpus of each node (default 1)")
    p_start.add_argument("--head-cpus", type=float, default=None, help="--num-cpus of the head (default: --cpus)")
    p_start.add_argument("--node-resources", action="append", default=[], metavar="INDEX=JSON",
                         help='custom resources of one node, e.g. 2=\'{"gpu_node": 1}\' (0 = head); repeatable')
    p_start.add_argument("--base-port", type=int, default=None, help="first port of the port blocks (default: free)")
    p_start.add_argument("--object-store-mb", type=int, default=256, help="object store per node (default 256)")
    p_start.add_argument("--no-dashboard", action="store_true", help="no dashboard (and so no Jobs API)")
    p_start.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra env for every node")
    p_start.add_argument("--json", action="store_true", help="print the state as JSON")
    p_add = sub.add_parser("add-node", parents=[common], help="start one more worker node")
    p_add.add_argument("--cpus", type=float, default=1)
    p_add.add_argument("--resources", default="{}", help="JSON custom resources")
    p_kill = sub.add_parser("kill-node", parents=[common], help="SIGKILL one node (raylet and workers): a fault drill")
    p_kill.add_argument("index", type=int)
    p_stop = sub.add_parser("stop", parents=[common], help="stop exactly the nodes started from --state-dir")
    p_stop.add_argument("--keep", action="store_true", help="keep the nodes' temp dirs (logs)")
    sub.add_parser("status", parents=[common], help="the nodes and whether they run")
    sub.add_parser("env", parents=[common], help="print export lines for a driver")
    args = parser.parse_args(argv)

    if args.command == "start":
        extra = dict(kv.split("=", 1) for kv in args.env)
        state = start(args.workers, args.cpus, args.head_cpus, _parse_resources(args.node_resources),
                      args.state_dir, args.base_port, args.object_store_mb, not args.no_dashboard, extra)
        print(json.dumps(state, indent=2)) if args.json else _print_started(state)
    elif args.command == "add-node":
        node = add_node(args.state_dir, args.cpus, {k: float(v) for k, v in json.loads(args.resources).items()})
        print(f"node {node['index']} started (pid {node['pid']})")
    elif args.command == "kill-node":
        print(f"killed node {args.index}: pids {kill_node(args.index, args.state_dir)}")
    elif args.command == "stop":
        print(f"stopped: signalled {len(stop(args.state_dir, keep=args.keep))} processes")
    elif args.command == "status":
        for row in status(args.state_dir):
            print(json.dumps(row))
    elif args.command == "env":
        state = load_state(args.state_dir)
        env = client_env(state, {})
        for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
            print(f"export {key}={env[key]}")


if __name__ == "__main__":
    main()
