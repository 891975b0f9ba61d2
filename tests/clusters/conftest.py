"""A real two-node Ray cluster on this machine, with token authentication, for tests.

`ray start --head` and `ray start --address` run as two separate processes, each with its
own --temp-dir, exactly as on two machines. Since Ray 2.59 a cluster has token
authentication whenever a token is present: we enable it explicitly with a throw-away
token file, so nothing is read from or written to ~/.ray/auth_token.

Teardown stops only the processes started here. `ray stop --force` is not used: it kills
every Ray process of this user on the machine (it matches processes by name), including
clusters that other test sessions are running.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 90.0  # a cold start takes 5-12 s per node here; slow CI machines more
OBJECT_STORE_BYTES = 128 * 1024**2  # the default would reserve ~30% of RAM per node
WORKER_RESOURCE = "raykd_test_worker"  # custom resource that only the worker node has


@dataclass(frozen=True)
class LocalRayCluster:
    address: str  # GCS address, "ip:port", for ray.init(address=...) and ray start --address
    auth_env: dict[str, str]  # what a client process needs in its environment to connect
    temp_root: Path
    worker_resource: str = WORKER_RESOURCE  # only the worker node has it


def _ray_executable() -> str | None:
    """The `ray` CLI of the interpreter running the tests (not whatever is first on PATH)."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else shutil.which("ray")


def _wait_started(proc: subprocess.Popen, log: Path, what: str) -> str | None:
    """None once `ray start` reports the node is up, else why it is not."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "Ray runtime started" in text:
            return None
        if proc.poll() is not None:
            return f"{what} exited with code {proc.returncode}:\n{text[-2000:]}"
        time.sleep(0.2)
    return f"{what} not up after {START_TIMEOUT_S:.0f} s:\n{log.read_text(errors='replace')[-2000:]}"


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop the `ray start --block` processes and every process they spawned, nothing else.

    With --block, `ray start` tears its node down on SIGTERM. Workers (`ray::IDLE`) run in
    their own process groups, so the whole tree is collected first and any survivor is
    killed after a grace period.
    """
    import psutil

    tree: list[psutil.Process] = []
    for proc in procs:
        try:
            root = psutil.Process(proc.pid)
            tree += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for proc in procs:  # workers first, head last: a worker never outlives its GCS
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    _, alive = psutil.wait_procs(tree, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LocalRayCluster]:
    """A head node process and one worker node process, token authentication on."""
    ray_cli = _ray_executable()
    if ray_cli is None:
        pytest.skip("the `ray` CLI is not installed beside this Python")

    # Short root: Ray puts Unix sockets under it and socket paths are limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="raykd-ray-"))
    token_file = root / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    env.update(auth_env)

    common = ["--block", "--num-cpus", "1", "--object-store-memory", str(OBJECT_STORE_BYTES),
              "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []

    def teardown() -> None:
        _stop(procs)
        shutil.rmtree(root, ignore_errors=True)

    def start(args: list[str], name: str) -> None:
        log = root / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [ray_cli, "start", *args, *common, "--temp-dir", str(root / name)],
                env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in pytest must not reach the nodes first
            )
        procs.insert(0, proc)  # stop order: newest first
        problem = _wait_started(proc, log, f"ray start ({name})")
        if problem:
            teardown()
            pytest.skip(f"could not start a local Ray cluster: {problem}")

    start(["--head", "--port", "0", "--include-dashboard", "false"], "head")
    address = (root / "head" / "ray_current_cluster").read_text().strip()
    start(["--address", address, "--resources", f'{{"{WORKER_RESOURCE}": 1}}'], "worker")
    try:
        yield LocalRayCluster(address=address, auth_env=auth_env, temp_root=root)
    finally:
        teardown()


@pytest.fixture(scope="session")
def ray_cluster_address(ray_cluster: LocalRayCluster) -> str:
    """GCS address ("ip:port") of a running two-node local Ray cluster."""
    return ray_cluster.address


@pytest.fixture
def ray_cluster_auth(ray_cluster: LocalRayCluster) -> Iterator[dict[str, str]]:
    """Client environment for `ray.init(address=ray_cluster_address)` in this process.

    A client that connects by address must set RAY_AUTH_MODE=token itself (only
    `ray.init()` / address="auto" turn it on by finding a token). Ray caches the mode and
    the token per process, so the cache is reset on the way in and on the way out.
    """
    import ray
    from ray._private.authentication_test_utils import reset_auth_token_state

    if ray.is_initialized():
        pytest.skip("a Ray session is already open in this process")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_AUTH_TOKEN", raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
        for key, value in ray_cluster.auth_env.items():
            mp.setenv(key, value)
        reset_auth_token_state()
        try:
            yield dict(ray_cluster.auth_env)
        finally:
            ray.shutdown()
    reset_auth_token_state()
