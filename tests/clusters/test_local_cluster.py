"""A client joins the two-node local cluster by address, with the token, and runs work on
the worker node: the path `raykd tune FILE --address ADDR` takes on a real cluster."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_client_runs_a_task_on_the_worker_node(ray_cluster, ray_cluster_address, ray_cluster_auth):
    import ray

    worker_resource = ray_cluster.worker_resource

    ray.init(address=ray_cluster_address, log_to_driver=False)

    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 2, alive
    (head,) = [n for n in alive if "node:__internal_head__" in n["Resources"]]
    (worker,) = [n for n in alive if worker_resource in n["Resources"]]
    assert head["NodeID"] != worker["NodeID"]

    @ray.remote(num_cpus=1, resources={worker_resource: 1})
    def square_where(x: int) -> tuple[str, int, int]:
        return ray.get_runtime_context().get_node_id(), os.getpid(), x * x

    node_id, pid, y = ray.get(square_where.remote(7), timeout=60)
    assert node_id == worker["NodeID"]
    assert pid != os.getpid()
    assert y == 49


CONNECT = """
import sys, ray
try:
    ray.init(address=sys.argv[1], log_to_driver=False)
except Exception as e:
    print(type(e).__name__, e)
    sys.exit(3)
print("connected")
"""


@pytest.mark.parametrize("client_env", [
    pytest.param({"RAY_AUTH_TOKEN_PATH": "<token>"}, id="right-token-but-no-RAY_AUTH_MODE"),
    pytest.param({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, id="wrong-token"),
])
def test_cluster_refuses_a_client_without_the_token(ray_cluster, client_env, tmp_path):
    """The cluster really checks the token; and a token file alone is not enough for a
    client that connects by address, it must also set RAY_AUTH_MODE=token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update({k: ray_cluster.auth_env["RAY_AUTH_TOKEN_PATH"] if v == "<token>" else v
                for k, v in client_env.items()})
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    env["RAY_gcs_server_port_wait_time_s"] = "2"  # give up after 2 connection attempts, not 20
    out = subprocess.run([sys.executable, "-c", CONNECT, ray_cluster.address], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "InvalidAuthToken" in out.stdout + out.stderr
