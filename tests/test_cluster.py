"""A real multi-node Ray cluster on this machine: work spreads, resources pin, nodes die, tokens guard.

The cluster is started once for the module with ``cluster/local_cluster.py`` (the script users run):
a head and two worker nodes of 1 CPU each, one of them with the custom resource ``gpu_node``, token
authentication on, every node its own ``ray start`` process with its own ports and temp dir. It is
stopped, exactly those processes, when the module ends, failed or not.

Every driver runs in a subprocess (a small script written per test, run with ``sys.executable``,
printing one ``RESULT {json}`` line). Why not connect from this process: the suite's ``ray_session``
fixture may already hold an in-process ``ray.init`` (one per process); shutting it down and re-initing
would break whatever session-scoped state other modules keep, and the auth mode and token are read
once per process, so "no token" and "wrong token" drivers need fresh processes anyway. A subprocess
also makes each test an honest picture of a user's driver: its own environment, its own exit.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import ray  # noqa: F401  -- a dependency: a broken install fails here, never skips

if not sys.platform.startswith("linux"):
    pytest.skip("the local cluster script reads /proc: Linux only", allow_module_level=True)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("local_cluster", ROOT / "cluster" / "local_cluster.py")
assert _spec is not None and _spec.loader is not None
local_cluster: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(local_cluster)

N_NODES = 3  # head + 2 workers, 1 CPU each
FAST_FAILURE_DETECTION = {  # the GCS declares a killed node dead in ~3 s instead of ~30 s
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}

PREAMBLE = '''
import json, os, sys, time
import ray
import rayrunnables as rr
from rayrunnables.backends.ray import RayBackend

def node_id():
    return ray.get_runtime_context().get_node_id()

def connect(n_nodes, **kwargs):
    """Attach to RAY_ADDRESS with the token from the environment; wait until n_nodes are alive."""
    backend = RayBackend(**kwargs)
    backend.ensure_started()
    deadline = time.monotonic() + 60
    while len([n for n in ray.nodes() if n["Alive"]]) < n_nodes:
        assert time.monotonic() < deadline, f"only {ray.nodes()} after 60 s"
        time.sleep(0.2)
    return {"backend": backend}

def alive_nodes():
    return {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}

def result(**values):
    print("RESULT " + json.dumps(values), flush=True)
'''


# ---- the cluster and the drivers -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster() -> Any:
    state_dir = tempfile.mkdtemp(prefix="rrc-", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        state = local_cluster.start(
            workers=N_NODES - 1, cpus=1, node_resources={2: {"gpu_node": 1}}, state_dir=state_dir,
            object_store_mb=128, dashboard=True, extra_env=FAST_FAILURE_DETECTION, timeout=150,
        )
        yield state
    finally:
        try:
            if Path(state_dir, "state.json").exists():
                local_cluster.stop(state_dir)
        finally:
            shutil.rmtree(state_dir, ignore_errors=True)


def driver_env(state: dict[str, Any], **overrides: str | None) -> dict[str, str]:
    env = local_cluster.client_env(state)
    for key in ("RAYRUNNABLES_BACKEND", "RAY_NAMESPACE", "PYTHONPATH"):
        env.pop(key, None)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def write_driver(tmp: Path, body: str) -> Path:
    script = tmp / f"driver_{uuid.uuid4().hex[:8]}.py"
    script.write_text(PREAMBLE + textwrap.dedent(body))
    return script


def parse(proc_stdout: str, proc_stderr: str, returncode: int | None) -> dict[str, Any]:
    for line in proc_stdout.splitlines():
        if line.startswith("RESULT "):
            value: dict[str, Any] = json.loads(line[len("RESULT "):])
            return value
    pytest.fail(f"driver gave no result (exit {returncode})\n--- stdout\n{proc_stdout[-3000:]}\n"
                f"--- stderr\n{proc_stderr[-5000:]}")


def run_driver(tmp: Path, env: dict[str, str], body: str, timeout: float = 120) -> dict[str, Any]:
    script = write_driver(tmp, body)
    proc = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp, capture_output=True, text=True,
                          timeout=timeout)
    return parse(proc.stdout, proc.stderr, proc.returncode)


def cli(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("rayrunnables")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from rayrunnables.cli import main; main()", *args]


# ---- where work runs ---------------------------------------------------------------------------------------------
def test_map_spreads_over_every_node(cluster: dict[str, Any], tmp_path: Path) -> None:
    out = run_driver(tmp_path, driver_env(cluster), f"""
        def where(x):
            time.sleep(0.3)
            return [x * 2, node_id()]

        cfg = connect({N_NODES})
        out = rr.RunnableLambda(where).map().invoke(list(range(24)), config=cfg)
        result(out=out, nodes=list(alive_nodes()))
    """)
    assert [value for value, _ in out["out"]] == [x * 2 for x in range(24)]
    share = Counter(node for _, node in out["out"])
    assert set(share) == set(out["nodes"]) and len(share) == N_NODES, share  # every node got a share


@pytest.fixture(scope="module")
def pinned(cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One driver run: where each form of a ``resources={"gpu_node": 1}`` step ran."""
    return run_driver(tmp_path_factory.mktemp("pinned"), driver_env(cluster), f"""
        def where(x):
            time.sleep(0.05)
            return node_id()

        cfg = connect({N_NODES})
        step = rr.RunnableLambda(where)
        gpu = {{"resources": {{"gpu_node": 1}}}}
        items = list(range(12))
        result(
            gpu_nodes=[n for n, res in alive_nodes().items() if res.get("gpu_node")],
            sequence=[(rr.RunnableLambda(lambda x: x) | step.with_options(**gpu)).invoke(1, config=cfg)],
            map_options=step.map().with_options(**gpu).invoke(items, config=cfg),
            batch=step.with_options(**gpu).batch(items, config=cfg),
            mapped_step=step.with_options(**gpu).map().invoke(items, config=cfg),
            plain=step.map().invoke(items, config=cfg),
        )
    """)


def test_resource_pinned_step_runs_only_on_its_node(pinned: dict[str, Any]) -> None:
    assert len(pinned["gpu_nodes"]) == 1
    for form in ("sequence", "map_options", "batch"):
        assert set(pinned[form]) == set(pinned["gpu_nodes"]), form
    assert len(set(pinned["plain"])) > 1  # without the option the same step spreads


def test_options_of_a_mapped_step_pin_its_chunks(pinned: dict[str, Any]) -> None:
    assert set(pinned["mapped_step"]) == set(pinned["gpu_nodes"])


def test_step_from_a_module_only_the_driver_has(cluster: dict[str, Any], tmp_path: Path) -> None:
    name = f"only_on_driver_{uuid.uuid4().hex[:8]}"
    out = run_driver(tmp_path, driver_env(cluster), f"""
        import importlib, importlib.util, shutil, tempfile
        where = tempfile.mkdtemp()
        with open(os.path.join(where, "{name}.py"), "w") as f:
            f.write('''
        import importlib.util
        import time

        import ray

        FACTOR = 7

        def helper(x):
            return x * FACTOR

        def step(x):
            time.sleep(0.25)
            return [helper(x), importlib.util.find_spec(__name__) is None, ray.get_runtime_context().get_node_id()]
        ''')
        sys.path.insert(0, where)
        mod = importlib.import_module("{name}")
        sys.path.remove(where)
        shutil.rmtree(where)  # from here on no process can import it from disk: only pickling by value helps
        cfg = connect({N_NODES})
        out = rr.RunnableLambda(mod.step).map().invoke(list(range(12)), config=cfg)
        result(out=out)
    """)
    assert [value for value, _, _ in out["out"]] == [x * 7 for x in range(12)]
    assert all(not_importable for _, not_importable, _ in out["out"])
    assert len({node for _, _, node in out["out"]}) > 1


# ---- who may connect ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["no token", "wrong token", "unreachable address"])
def test_refused_driver_gets_a_clear_error_quickly(cluster: dict[str, Any], tmp_path: Path, case: str) -> None:
    home = tmp_path / "home"  # no ~/.ray/auth_token to fall back on
    home.mkdir()
    if case == "no token":
        env = driver_env(cluster, HOME=str(home), RAY_AUTH_MODE=None, RAY_AUTH_TOKEN_PATH=None)
        expected = ["refused this driver", "sent no token", "RAY_AUTH_TOKEN_PATH"]
    elif case == "wrong token":
        wrong = tmp_path / "wrong_token"
        wrong.write_text("0" * 64)
        wrong.chmod(0o600)
        env = driver_env(cluster, HOME=str(home), RAY_AUTH_TOKEN_PATH=str(wrong))
        expected = ["refused this driver", str(wrong)]
    else:
        env = driver_env(cluster, RAY_ADDRESS=f"127.0.0.1:{free_port()}")
        expected = ["cannot reach Ray", "refused"]
    started = time.monotonic()
    out = run_driver(tmp_path, env, """
        t = time.monotonic()
        try:
            rr.RunnableLambda(lambda x: x + 1).invoke(1, config={"backend": RayBackend(connect_timeout=10)})
            result(error=None)
        except rr.BackendError as exc:
            result(error=str(exc), seconds=time.monotonic() - t)
    """, timeout=60)
    assert out["error"] is not None, f"{case}: the cluster accepted the driver"
    for text in expected:
        assert text in out["error"], (text, out["error"])
    assert out["seconds"] < 10 and time.monotonic() - started < 45


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ---- the command line and the Jobs API ---------------------------------------------------------------------------
JOB_MODULE = '''
import ray
from rayrunnables import RunnableLambda


def enrich(doc):
    return {"n": doc["n"] * 3, "node": ray.get_runtime_context().get_node_id()}


chain = RunnableLambda(enrich)
'''


def _job_files(tmp: Path, n: int) -> str:
    name = f"clusterjob_{uuid.uuid4().hex[:8]}"
    (tmp / f"{name}.py").write_text(JOB_MODULE)
    (tmp / "docs.jsonl").write_text("".join(json.dumps({"n": i}) + "\n" for i in range(n)))
    return name


def _check_output(path: Path, n: int) -> None:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(n))
    assert [r["output"]["n"] for r in records] == [3 * i for i in range(n)]


def test_cli_run_against_the_cluster(cluster: dict[str, Any], tmp_path: Path) -> None:
    name = _job_files(tmp_path, 40)
    env = driver_env(cluster, RAY_ADDRESS=None)  # the address comes from --address only
    proc = subprocess.run(
        cli("run", f"{name}:chain", "--input", "docs.jsonl", "--output", "out.jsonl", "--errors", "errors.jsonl",
            "--backend", "ray", "--address", cluster["address"], "--no-progress"),
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check_output(tmp_path / "out.jsonl", 40)
    assert (tmp_path / "errors.jsonl").read_text() == ""


def test_same_run_as_a_ray_job(cluster: dict[str, Any], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    name = _job_files(work, 20)
    out = tmp_path / "job_out.jsonl"  # same machine: the job writes where the test can read
    if not Path(sys.executable).with_name("rayrunnables").exists():
        pytest.skip("the rayrunnables console script is not installed next to this Python")
    env = driver_env(cluster, RAY_ADDRESS=None)
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", cluster["dashboard_url"],
         "--working-dir", str(work), "--",
         "rayrunnables", "run", f"{name}:chain", "--input", "docs.jsonl", "--output", str(out),
         "--backend", "ray", "--no-progress"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0 and "succeeded" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_output(out, 20)


DATA_CHAIN = """
import ray
from rayrunnables import RunnableLambda

def tag(doc):
    if doc["i"] % 1000 == 5:
        raise ValueError(f"cannot take {doc['i']}")
    return {"i": doc["i"], "node": ray.get_runtime_context().get_node_id()}

chain = RunnableLambda(tag, name="tag")
"""


def test_data_engine_reads_runs_and_writes_on_every_node(cluster: dict[str, Any], tmp_path: Path) -> None:
    """4 files of 25,000 documents with malformed lines and failing documents, over the whole cluster: each
    good id exactly once across the shards, each bad one in the errors."""
    name = f"data_chain_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(DATA_CHAIN)
    (tmp_path / "docs").mkdir()
    good, bad = set(), set()
    for f in range(4):
        path = tmp_path / "docs" / f"d{f}.jsonl"
        lines = []
        for i in range(25_000):
            if i % 10_000 == 3:
                lines.append("{not json")
                bad.add(f"d{f}.jsonl:{i + 1}")  # FILE relative to the input root
            else:
                lines.append(json.dumps({"doc_id": f"{f}-{i}", "i": i}))
                (bad if i % 1000 == 5 else good).add(f"{f}-{i}")
        path.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        cli("run", f"{name}:chain", "--input", "docs", "--output", "out", "--errors", "errors", "--id-field", "doc_id",
            "--address", cluster["address"], "--chunk-size", "2500", "--no-progress"),
        cwd=tmp_path, env=driver_env(cluster, RAY_ADDRESS=None, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=240,
    )
    assert proc.returncode == 1, proc.stderr[-4000:]
    outputs = [json.loads(line) for p in sorted((tmp_path / "out").glob("part-*.jsonl"))
               for line in p.read_text().splitlines()]
    errors = [json.loads(line) for p in sorted((tmp_path / "errors").glob("errors-*.jsonl"))
              for line in p.read_text().splitlines()]
    ids, error_ids = Counter(r["id"] for r in outputs), Counter(r["id"] for r in errors)
    assert set(ids) == good and max(ids.values()) == 1
    assert set(error_ids) == bad and max(error_ids.values()) == 1
    assert all(r["output"]["i"] == r["index"] for r in outputs)
    assert len({r["output"]["node"] for r in outputs}) > 1  # the work spread over the nodes


# ---- nodes dying ---------------------------------------------------------------------------------------------------
KILL_DRIVER = """
LOG = {log!r}

def slow(x):
    with open(LOG, "a") as f:  # one line per execution: item, this worker's raylet pid
        f.write(f"{{x}} {{os.getppid()}}\\n")
    time.sleep(0.4)
    return x * 10

cfg = connect({n_nodes})
print("CONNECTED", flush=True)
items = list(range({n_items}))
step = rr.RunnableLambda(slow)
out = step.map().invoke(items, config=cfg) if {use_map} else step.batch(items, config=cfg)
result(out=out)
"""


@pytest.mark.parametrize("api", ["map", "batch"])
def test_worker_node_killed_mid_run_loses_nothing(cluster: dict[str, Any], tmp_path: Path, api: str) -> None:
    victim = local_cluster.add_node(cluster["state_dir"], cpus=1, timeout=120)
    n_items, log = 40, tmp_path / "executions.log"
    script = write_driver(tmp_path, KILL_DRIVER.format(log=str(log), n_nodes=N_NODES + 1, n_items=n_items,
                                                       use_map=api == "map"))
    proc = subprocess.Popen([sys.executable, str(script)], env=driver_env(cluster), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim_pids = set(local_cluster._node_processes(victim))
        deadline, killed = time.monotonic() + 90, False
        while time.monotonic() < deadline and proc.poll() is None:
            lines = log.read_text().splitlines() if log.exists() else []
            on_victim = [line for line in lines if int(line.split()[1]) in victim_pids]
            if on_victim:  # the victim is running items now: it dies mid-run
                local_cluster.kill_node(victim["index"], cluster["state_dir"])
                killed, done_before = True, len(lines)
                break
            time.sleep(0.05)
        assert killed, "the victim node never ran an item"
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = parse(stdout, stderr, proc.returncode)
    assert done_before < n_items  # the kill came mid-run
    assert out["out"] == [x * 10 for x in range(n_items)]  # every item exactly once, in order
    executions = Counter(int(line.split()[0]) for line in log.read_text().splitlines())
    assert set(executions) == set(range(n_items))  # items of the lost chunk ran again elsewhere
    rerun = sorted(x for x, count in executions.items() if count > 1)
    print(f"{api}: node killed after {done_before}/{n_items} executions; items run again elsewhere: {rerun}")


PACED_DATA_CHAIN = """
import os, time
from rayrunnables import RunnableLambda

LOG = {log!r}

def paced(doc):
    if doc["i"] % 100 == 0:  # now and then: which node's worker runs items (its raylet's pid)
        with open(LOG, "a") as f:
            f.write(f"{{doc['i']}} {{os.getppid()}}\\n")
    time.sleep(0.004)
    if doc["i"] % 1000 == 5:
        raise ValueError(f"cannot take {{doc['i']}}")
    return doc["i"]

chain = RunnableLambda(paced, name="paced")
"""


def _committed(out: Path) -> int:
    """Items the markers in ``out`` hold (names only)."""
    import pyarrow.fs

    from rayrunnables.shardlog import CommitLog

    return CommitLog(pyarrow.fs.LocalFileSystem(), str(out)).scan().done


@pytest.mark.slow
def test_data_engine_node_lost_then_driver_killed_then_resumed_is_exactly_once(
    cluster: dict[str, Any], tmp_path: Path,
) -> None:
    """A worker node dies mid-run (Ray Data runs its batches again elsewhere), then the driver is killed; the
    resumed run ends with every good id, and every error record, exactly once across the committed shards."""
    victim = local_cluster.add_node(cluster["state_dir"], cpus=1, timeout=120)
    name, log = f"paced_{uuid.uuid4().hex[:8]}", tmp_path / "runs.log"
    (tmp_path / f"{name}.py").write_text(PACED_DATA_CHAIN.format(log=str(log)))
    (tmp_path / "docs").mkdir()
    good, bad = set(), set()
    for f in range(4):
        lines = [json.dumps({"doc_id": f"{f}-{i}", "i": i}) for i in range(5000)]
        lines[9] = "{not json"
        (tmp_path / "docs" / f"d{f}.jsonl").write_text("\n".join(lines) + "\n")
        for i in range(5000):
            (bad if i % 1000 == 5 or i == 9 else good).add(f"{f}-{i}" if i != 9 else f"d{f}.jsonl:10")
    out, errors = tmp_path / "out", tmp_path / "errors"
    args = cli("run", f"{name}:chain", "--input", "docs", "--output", "out", "--errors", "errors", "--id-field",
               "doc_id", "--address", cluster["address"], "--chunk-size", "250", "--no-progress")
    env = driver_env(cluster, RAY_ADDRESS=None, PYTHONPATH=str(ROOT))  # this checkout, as its nodes
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    total = len(good | bad)
    try:
        victim_pids = set(local_cluster._node_processes(victim))
        deadline, ran = time.monotonic() + 120, False
        while time.monotonic() < deadline and proc.poll() is None:
            lines = log.read_text().splitlines() if log.exists() else []
            ran = any(int(line.split()[1]) in victim_pids for line in lines)
            # the victim dies once it runs items (or, if its workers start late on a loaded machine, at 30%)
            if ran or _committed(out) >= 0.3 * total:
                local_cluster.kill_node(victim["index"], cluster["state_dir"])
                break
            time.sleep(0.05)
        at_node_loss = _committed(out)
        assert at_node_loss < 0.5 * total, "the node must die mid-run"
        while time.monotonic() < deadline and proc.poll() is None and _committed(out) < at_node_loss + 0.1 * total:
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before the driver could be killed: " + (
            proc.stderr.read().decode()[-3000:] if proc.stderr else "")
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    settled = -1  # the dead driver's workers are ended by Ray; a task running then may still finish
    while settled != (settled := len(list(out.rglob("*")) + list(errors.glob("*")))):
        time.sleep(3)
    before = _committed(out)
    assert at_node_loss < before < total, (at_node_loss, before, total)
    resumed = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 1, resumed.stderr[-4000:]  # some documents fail
    assert f"{before:,} already done" in resumed.stderr
    outputs = Counter(json.loads(line)["id"] for p in out.glob("part-*.jsonl") for line in p.read_text().splitlines())
    failed = Counter(json.loads(line)["id"] for p in errors.glob("errors-*.jsonl")
                     for line in p.read_text().splitlines())
    assert set(outputs) == good and max(outputs.values()) == 1
    assert set(failed) == bad and max(failed.values()) == 1
    print(f"node lost at {at_node_loss}/{total} committed (it had run items: {ran}), driver killed at {before}/{total}")


# ---- manifests that cannot run here: parsed and checked -----------------------------------------------------------
def test_cluster_manifests_are_valid_and_secure() -> None:
    yaml = pytest.importorskip("yaml")
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    launcher = yaml.safe_load((ROOT / "cluster" / "cluster-launcher.yaml").read_text())
    validate_config(fillout_defaults(json.loads(json.dumps(launcher))))  # Ray's own cluster-config schema
    head_start = " ".join(launcher["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(launcher["worker_start_ray_commands"])
    assert "~/.ray/auth_token" in launcher["file_mounts"]

    docs = [d for d in yaml.safe_load_all((ROOT / "cluster" / "kuberay.yaml").read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert {"RayCluster", "RayJob", "NetworkPolicy"} <= set(kinds)
    assert "Secret" not in kinds  # the token is created out of band, never committed
    ray_cluster, ray_job = kinds["RayCluster"], kinds["RayJob"]
    assert ray_cluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert "rayrunnables run" in ray_job["spec"]["entrypoint"]
    assert ray_job["spec"]["clusterSelector"]["ray.io/cluster"] == ray_cluster["metadata"]["name"]
    pods = [ray_cluster["spec"]["headGroupSpec"]["template"]["spec"], ray_job["spec"]["submitterPodTemplate"]["spec"]]
    pods += [group["template"]["spec"] for group in ray_cluster["spec"]["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert "RAY_AUTH_TOKEN" not in env or "valueFrom" in env["RAY_AUTH_TOKEN"]
        secrets = [v["secret"] for v in pod["volumes"] if "secret" in v]
        assert secrets and all(s["defaultMode"] & 0o007 == 0 for s in secrets)  # not world-readable
