"""The files in clusters/ checked against the tools that will read them: Ray's own cluster
launcher validation and `ray start` flags, Ray's RuntimeEnv and working_dir packager, the
raykd CLI and config schema, and `mlflow server`'s options and Host-header check.
Fast and offline: nothing here starts a cluster or touches the network."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTERS = REPO / "clusters"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
ENV_FILE = "~/.raykd_env"
SHARED = "/mnt/shared"


# ----------------------------------------------------------------------------- helpers


def load(rel: str) -> Any:
    return yaml.safe_load((CLUSTERS / rel).read_text())


def load_all(rel: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((CLUSTERS / rel).read_text()) if d is not None]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def project_pins() -> dict[str, str]:
    """{"torch": "2.9.1", ...} for the == pins in pyproject's dependencies."""
    pins = {}
    for dep in pyproject()["project"]["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^;\s]+)", dep.strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def option_names(command) -> set[str]:
    """Every spelling of every option of a click command (`--port`, `-p`, ...)."""
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def ray_start_args(command: str) -> list[str]:
    """The arguments of `ray start ...` inside a shell command line."""
    for segment in re.split(r"&&|;|\|\|", command):
        tokens = shlex.split(segment)
        if tokens[:2] == ["ray", "start"]:
            return tokens[2:]
    raise AssertionError(f"no `ray start` in {command!r}")


def flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("-")]


def validate_launcher(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does before it talks to the cloud: merge the provider defaults, then
    validate against ray/autoscaler/ray-schema.json plus Ray's cross-field checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def run_bash(script: str, home: Path, extra_env: dict[str, str] | None = None) -> str:
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", **(extra_env or {})}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{script!r} failed: {out.stderr}"
    return out.stdout


def node_env(config: dict[str, Any], home: Path) -> dict[str, str]:
    """Run the launcher's env-file setup commands in a scratch HOME and read the file back."""
    for cmd in config["setup_commands"]:
        if ".raykd_env" in cmd:
            run_bash(cmd, home)
    out = run_bash(f"source {ENV_FILE} && env", home)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def raykd_cli():
    import typer

    from raykd.cli import app

    return typer.main.get_command(app)


def parse_raykd(argv: list[str]):
    """Parse `raykd SUB ...` with the real CLI: unknown subcommands or options raise."""
    assert argv[0] == "raykd", argv
    group = raykd_cli()
    assert argv[1] in group.commands, f"`raykd {argv[1]}` is not a command: {sorted(group.commands)}"
    sub = group.commands[argv[1]]
    return sub, sub.make_context(argv[1], argv[2:])


def command_config(ctx):
    """The config a parsed `raykd SUB CONFIG --set ...` would run with, loaded by raykd."""
    from raykd.config import load_config

    return load_config(REPO / ctx.params["config"], ctx.params.get("set_"))


def assert_on_shared_storage(cfg) -> None:
    for key, path in [("storage_path", cfg.storage_path), ("cache_dir", cfg.cache_dir),
                      ("data.root", cfg.data.root)]:
        assert str(path).startswith(SHARED + "/"), f"{key}={path} is not on the shared file system"


def config_with_overrides(overrides: list[str]):
    """The default raykd config with `--set` overrides applied through raykd.config."""
    from raykd.config import RaykdConfig, config_from_dict, parse_overrides, set_dotted

    raw = RaykdConfig().model_dump(mode="json")
    for key, value in parse_overrides(overrides):
        set_dotted(raw, key, value)
    return config_from_dict(raw)


def runtime_env_errors(env: dict[str, Any], working_dir: Path) -> list[str]:
    """Problems with a runtime_env dict: unknown top-level keys (RuntimeEnv accepts any key
    as a plugin, so a typo passes silently) and what RuntimeEnv's own validation rejects."""
    from ray.runtime_env import RuntimeEnv

    unknown = sorted(set(env) - set(RuntimeEnv.known_fields))
    if unknown:
        return [f"unknown runtime_env keys {unknown}"]
    cwd = os.getcwd()
    os.chdir(working_dir)  # relative working_dir / py_modules are checked against the cwd
    try:
        RuntimeEnv(**env)
    except (TypeError, ValueError) as e:
        return [str(e)]
    finally:
        os.chdir(cwd)
    return []


def pod_containers(cluster_spec: dict[str, Any]) -> list[dict[str, Any]]:
    pods = [cluster_spec["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in cluster_spec["workerGroupSpecs"]]
    return [c for pod in pods for c in pod["containers"]]


def env_value(container: dict[str, Any], name: str) -> str | None:
    return next((e.get("value") for e in container.get("env", []) if e["name"] == name), None)


def rayjob_argv() -> list[str]:
    return shlex.split(one(load_all("kuberay/rayjob.yaml"), "RayJob")["spec"]["entrypoint"])


def mlflow_server_argv(command: str) -> list[str]:
    """The arguments after `mlflow server` in a shell command line."""
    tokens = shlex.split(command.replace("\\\n", " "), comments=True)
    i = next(i for i in range(len(tokens) - 1) if tokens[i:i + 2] == ["mlflow", "server"])
    return tokens[i + 2:]


def opt(argv: list[str], name: str) -> str:
    for i, a in enumerate(argv):
        if a == name:
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


# ----------------------------------------------------------------------------- launcher YAMLs


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_passes_rays_own_validation(name):
    raw = load(name)
    import jsonschema

    jsonschema.validate(raw, ray_schema())  # the file as written, before defaults fill gaps
    prepared = validate_launcher(raw)  # and as `ray up` sees it
    assert set(prepared["available_node_types"]) == set(raw["available_node_types"])


BREAKAGES = {
    "unknown top-level key": lambda c: c.update(gpu_workers=2),
    "max_workers not an integer": lambda c: c.update(max_workers="ten"),
    "node type without resources": lambda c: c["available_node_types"]["gpu_1x"].pop("resources"),
    "fractional GPU resource": lambda c: c["available_node_types"]["gpu_1x"]["resources"].update(GPU=0.5),
    "unknown node type field": lambda c: c["available_node_types"]["gpu_1x"].update(gpus=1),
    "setup command not a string": lambda c: c["setup_commands"].append(["pip", "install", "x"]),
    "head type not a node type": lambda c: c.update(head_node_type="ray.head.default"),
    "min_workers above the cluster's max_workers":
        lambda c: c["available_node_types"]["gpu_1x"].update(min_workers=c["max_workers"] + 1),
}


@pytest.mark.parametrize("name", LAUNCHERS)
@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_validation_rejects_a_broken_launcher(name, breakage):
    """The validator above is real: each of these edits makes Ray refuse the file."""
    import jsonschema

    config = load(name)
    BREAKAGES[breakage](config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_launcher(config)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_on_demand_cpu_head_and_gpu_workers_from_zero(name):
    config = load(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head must not take GPU trials"
    assert head.get("max_workers", 0) == 0
    node = head["node_config"]
    assert "InstanceMarketOptions" not in node, "head must be on-demand, not spot"
    assert not any(s.get("preemptible") or s.get("provisioningModel") == "SPOT"
                   for s in node.get("scheduling", [])), "head must be on-demand, not preemptible"

    gpu_types = {k: t for k, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no GPU worker type"
    for key, t in gpu_types.items():
        assert t.get("min_workers", 0) == 0, f"{key} must scale from 0"
        assert 1 <= t["max_workers"] <= config["max_workers"], key
    assert config["max_workers"] >= max(t["max_workers"] for t in gpu_types.values())


@pytest.mark.parametrize("name", LAUNCHERS)
def test_cluster_runs_the_clients_ray_version(name):
    import ray

    image = load(name)["docker"]["image"]
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-.*", image)
    assert m, image
    assert m.group(1) == ray.__version__, "cluster and client Ray must be the same version"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_setup_installs_the_pinned_torch_pair_then_the_project(name):
    pins = project_pins()
    cmds = load(name)["setup_commands"]
    torch_at = [i for i, c in enumerate(cmds) if "torch==" in c]
    project_at = [i for i, c in enumerate(cmds) if re.search(r"pip install\b.*~/raykd\b", c)]
    assert len(torch_at) == 1 and len(project_at) == 1, cmds
    words = shlex.split(cmds[torch_at[0]])
    # one pip run for both: torchaudio from PyPI only loads beside its own torch build
    assert f"torch=={pins['torch']}" in words and f"torchaudio=={pins['torchaudio']}" in words
    assert torch_at[0] < project_at[0]
    assert load(name)["file_mounts"]["~/raykd"] == "."  # the project installed is this repo


@pytest.mark.parametrize("name", LAUNCHERS)
def test_every_node_gets_tracking_uri_and_token_auth(name, tmp_path):
    config = load(name)
    env = node_env(config, tmp_path)
    runtime = load("runtime_env.yaml")["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == runtime["MLFLOW_TRACKING_URI"]
    assert env["HF_HOME"] == runtime["HF_HOME"]
    assert env["RAY_AUTH_MODE"] == "token"
    # setup runs again on every `ray up`: ~/.bashrc must source the file exactly once
    node_env(config, tmp_path)
    assert (tmp_path / ".bashrc").read_text().splitlines().count(f"source {ENV_FILE}") == 1
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


@pytest.mark.parametrize("name", LAUNCHERS)
@pytest.mark.parametrize("role", ["head", "worker"])
def test_ray_start_sees_the_node_env(name, role, tmp_path):
    """Run the real start commands with `ray` and `ulimit` stubbed: `ray start` must be
    started with the tracking URI and RAY_AUTH_MODE=token in its environment."""
    config = load(name)
    expected = node_env(config, tmp_path)
    stub = ('ray() { echo "ARGS $*"; echo "URI=$MLFLOW_TRACKING_URI"; echo "AUTH=$RAY_AUTH_MODE"; }\n'
            "ulimit() { :; }\n")
    out = run_bash(stub + "\n".join(config[f"{role}_start_ray_commands"]), tmp_path,
                   {"RAY_HEAD_IP": "10.1.2.3"})
    starts = [line for line in out.splitlines() if line.startswith("ARGS start")]
    assert len(starts) == 1, out
    assert f"URI={expected['MLFLOW_TRACKING_URI']}" in out and "AUTH=token" in out


@pytest.mark.parametrize("name", LAUNCHERS)
def test_start_commands_use_real_ray_start_flags(name):
    from ray.scripts.scripts import start

    known = option_names(start)
    config = load(name)
    head = ray_start_args(config["head_start_ray_commands"][-1])
    worker = ray_start_args(config["worker_start_ray_commands"][-1])
    for args in (head, worker):
        assert set(flags(args)) <= known, set(flags(args)) - known
    assert "--head" in head and "--autoscaling-config" in flags(head)
    port = opt(head, "--port")
    assert opt(worker, "--address") == f"$RAY_HEAD_IP:{port}"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_shared_filesystem_is_mounted_into_the_container(name):
    config = load(name)
    assert f"-v {SHARED}:{SHARED}" in config["docker"]["run_options"]
    assert any(f"mkdir -p {SHARED}" in c and "mount" in c for c in config["initialization_commands"])


def trial_worker_bundle() -> dict[str, float]:
    """What one Ray Train worker of a trial asks for under search_spaces/wakeword.yaml."""
    from raykd.config import load_config

    s = load_config(REPO / "search_spaces" / "wakeword.yaml").scaling
    return {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}


def k8s_quantity(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@pytest.mark.parametrize("name", [*LAUNCHERS, "kuberay/raycluster.yaml"])
def test_a_trial_worker_fits_on_a_gpu_node(name):
    """Otherwise Tune waits forever for resources no node type can offer."""
    bundle = trial_worker_bundle()
    if name in LAUNCHERS:
        config = load(name)
        nodes = [t["resources"] for k, t in config["available_node_types"].items()
                 if k != config["head_node_type"]]
    else:
        spec = one(load_all(name), "RayCluster")["spec"]
        nodes = [{"CPU": k8s_quantity(c["resources"]["limits"]["cpu"]),
                  "GPU": k8s_quantity(c["resources"]["limits"].get("nvidia.com/gpu", 0))}
                 for g in spec["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]]
    assert any(all(node.get(r, 0) >= need for r, need in bundle.items()) for node in nodes), (bundle, nodes)


# ----------------------------------------------------------------------------- runtime env


def test_runtime_env_is_valid():
    env = load("runtime_env.yaml")
    assert runtime_env_errors(env, REPO) == []
    assert {"MLFLOW_TRACKING_URI", "HF_HOME"} <= set(env["env_vars"])


@pytest.mark.parametrize("broken", [
    {"env_var": {"A": "b"}},  # typo of env_vars: RuntimeEnv alone would accept it
    {"env_vars": {"WORKERS": 2}},  # values must be strings
    {"working_dir": "no/such/dir"},
])
def test_runtime_env_check_rejects(broken):
    assert runtime_env_errors(broken, REPO)


def test_working_dir_upload_leaves_out_venv_data_and_runs(tmp_path):
    """Package the repo exactly as `ray job submit` would (gitignore + excludes)."""
    from ray._private.runtime_env.packaging import PACKAGE_SIZE_WARNING, create_package

    env = load("runtime_env.yaml")
    zip_path = tmp_path / "working_dir.zip"
    create_package(str(REPO / env["working_dir"]), zip_path, include_gitignore=True,
                   excludes=env["excludes"])
    names = zipfile.ZipFile(zip_path).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert not tops & {".venv", ".git", "data", "runs", ".raykd", "mlruns"}, tops
    assert "raykd/__init__.py" in names and "pyproject.toml" in names
    assert zip_path.stat().st_size < PACKAGE_SIZE_WARNING


# ----------------------------------------------------------------------------- KubeRay


def test_kuberay_manifests_have_the_right_kinds():
    for rel, kind in [("kuberay/raycluster.yaml", "RayCluster"), ("kuberay/rayjob.yaml", "RayJob")]:
        (doc,) = load_all(rel)
        assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", kind)
        assert doc["metadata"]["namespace"] == "raykd"
    storage = load_all("kuberay/storage.yaml")
    assert one(storage, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]


def test_raycluster_autoscales_a_gpu_group_from_zero():
    from ray.scripts.scripts import start

    import ray

    spec = one(load_all("kuberay/raycluster.yaml"), "RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert not any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                   for c in head["template"]["spec"]["containers"])
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if any(c["resources"]["limits"].get("nvidia.com/gpu", 0) >= 1
                         for c in g["template"]["spec"]["containers"])]
    assert gpu_groups
    for g in gpu_groups:
        assert g["minReplicas"] == 0 and 0 <= g["replicas"] <= g["maxReplicas"] and g["maxReplicas"] >= 1
    known = option_names(start)
    for params in [head["rayStartParams"], *(g["rayStartParams"] for g in spec["workerGroupSpecs"])]:
        assert {f"--{k}" for k in params} <= known


def test_rayjob_runs_on_the_raycluster_spec():
    job = one(load_all("kuberay/rayjob.yaml"), "RayJob")["spec"]
    cluster = one(load_all("kuberay/raycluster.yaml"), "RayCluster")["spec"]
    assert job["rayClusterSpec"] == cluster
    assert job["shutdownAfterJobFinishes"] is True


def test_every_ray_pod_has_the_tracking_uri_and_the_shared_volume():
    spec = one(load_all("kuberay/raycluster.yaml"), "RayCluster")["spec"]
    pvc = one(load_all("kuberay/storage.yaml"), "PersistentVolumeClaim")["metadata"]["name"]
    uris = {env_value(c, "MLFLOW_TRACKING_URI") for c in pod_containers(spec)}
    assert len(uris) == 1 and None not in uris, uris
    pods = [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]
    for pod in pods:
        shared = {v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == pvc}
        for c in pod["containers"]:
            assert any(m["name"] in shared and m["mountPath"] == SHARED for m in c["volumeMounts"])


def test_rayjob_entrypoint_is_a_real_raykd_command():
    argv = rayjob_argv()
    sub, ctx = parse_raykd(argv)  # raises on an unknown subcommand or option
    assert sub.name == "tune"
    cfg = command_config(ctx)  # the search space loads and every --set key validates
    assert cfg.search is not None
    pods = pod_containers(one(load_all("kuberay/raycluster.yaml"), "RayCluster")["spec"])
    assert cfg.tracking.uri == env_value(pods[0], "MLFLOW_TRACKING_URI")
    assert_on_shared_storage(cfg)


def test_rayjob_entrypoint_files_exist_in_the_repo():
    """Path arguments of the entrypoint resolve from the job's working_dir, the repo copy
    in the image. Fails until those files are in the repo."""
    sub, ctx = parse_raykd(rayjob_argv())
    paths = [ctx.params[p.name] for p in sub.params
             if p.param_type_name == "argument" and isinstance(ctx.params[p.name], Path)]
    assert paths == [Path("search_spaces/wakeword.yaml")]
    missing = [str(p) for p in paths if not (REPO / p).is_file()]
    assert not missing, f"named by clusters/kuberay/rayjob.yaml but not in the repo: {missing}"


def test_rayjob_runtime_env_uploads_the_image_copy_of_the_repo():
    runtime = yaml.safe_load(one(load_all("kuberay/rayjob.yaml"), "RayJob")["spec"]["runtimeEnvYAML"])
    copied_to = re.search(r"^COPY\b.*\s(\S+)$", (CLUSTERS / "Dockerfile").read_text(), re.M).group(1)
    assert runtime["working_dir"] == copied_to
    # the image's copy is this repo: validate with the repo standing in for it
    assert runtime_env_errors({**runtime, "working_dir": str(REPO)}, REPO) == []


def test_image_pins_ray_torch_and_the_project_version():
    import ray

    dockerfile = (CLUSTERS / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+rayproject/ray:(\d+\.\d+\.\d+)-\S+", dockerfile, re.M)
    assert base and base.group(1) == ray.__version__
    pins = project_pins()
    torch_line = next(line for line in dockerfile.splitlines() if "torch==" in line)
    assert f"torch=={pins['torch']}" in torch_line.split() and f"torchaudio=={pins['torchaudio']}" in torch_line.split()
    version = pyproject()["project"]["version"]
    for c in pod_containers(one(load_all("kuberay/raycluster.yaml"), "RayCluster")["spec"]):
        assert c["image"].endswith(f"/raykd:{version}"), c["image"]


# ----------------------------------------------------------------------------- MLflow


def test_mlflow_on_kubernetes_serves_the_uri_the_ray_pods_use():
    from mlflow.cli import server
    from mlflow.server.security_utils import is_allowed_host_header

    docs = load_all("mlflow/mlflow.yaml")
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    deploy = one(docs, "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    argv = mlflow_server_argv(container["command"][-1])
    assert set(flags(argv)) <= option_names(server), set(flags(argv)) - option_names(server)
    assert opt(argv, "--host") == "0.0.0.0"
    assert opt(argv, "--backend-store-uri").startswith("postgresql://")
    assert re.match(r"(s3|gs)://", opt(argv, "--artifacts-destination"))

    pods = pod_containers(one(load_all("kuberay/raycluster.yaml"), "RayCluster")["spec"])
    uri = env_value(pods[0], "MLFLOW_TRACKING_URI")
    m = re.fullmatch(r"http://([^.]+)\.([^.]+)\.svc\.cluster\.local:(\d+)", uri)
    assert m, uri
    svc = services[m.group(1)]
    assert svc["metadata"]["namespace"] == m.group(2)
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert int(m.group(3)) == svc["spec"]["ports"][0]["port"]
    assert svc["spec"]["ports"][0]["targetPort"] == int(opt(argv, "--port"))
    # MLflow's own Host-header check, with the server's --allowed-hosts
    allowed = [h.strip() for h in opt(argv, "--allowed-hosts").split(",")]
    assert is_allowed_host_header(allowed, uri.split("//", 1)[1])  # Ray pods
    assert is_allowed_host_header(allowed, f"localhost:{m.group(3)}")  # kubectl port-forward
    assert not is_allowed_host_header(allowed, "evil.example.com")

    # the backend URI names the Postgres service of this manifest
    db = re.fullmatch(r"postgresql://(\w+):[^@]+@([^.]+)\.([^.]+)\.svc\.cluster\.local:(\d+)/(\w+)",
                      opt(argv, "--backend-store-uri"))
    assert db, opt(argv, "--backend-store-uri")
    pg = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    assert (db.group(1), db.group(5)) == (env_value(pg, "POSTGRES_USER"), env_value(pg, "POSTGRES_DB"))
    assert services[db.group(2)]["spec"]["ports"][0]["port"] == int(db.group(4))


def test_mlflow_vm_script_runs_a_real_mlflow_server_command():
    from mlflow.cli import server

    script = CLUSTERS / "mlflow" / "serve.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    argv = mlflow_server_argv(script.read_text())
    assert set(flags(argv)) <= option_names(server)
    assert opt(argv, "--host") == "0.0.0.0"
    assert "postgresql://" in script.read_text()


# ----------------------------------------------------------------------------- docs


def doc_commands(text: str) -> list[list[str]]:
    """`raykd ...` command lines in the fenced code blocks, continuation lines joined."""
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" -- ", 1)[-1].split("#")[0].strip()
            if line.startswith("raykd "):
                cmds.append(shlex.split(line))
    return cmds


def test_docs_name_real_files_and_commands():
    text = (REPO / "docs" / "cluster.md").read_text()
    paths = set(re.findall(r"\bclusters/[\w./-]+\.(?:yaml|sh|md)|\bclusters/Dockerfile\b", text))
    assert paths, "docs/cluster.md names no cluster files"
    assert not [p for p in paths if not (REPO / p).exists()]
    cmds = doc_commands(text)
    assert cmds
    for argv in cmds:
        sub, ctx = parse_raykd(argv)
        if sub.name == "tune":  # a cluster study: everything on the shared file system
            assert_on_shared_storage(command_config(ctx))


def test_cloud_storage_path_reaches_the_config_unchanged():
    from raykd.config import ConfigError, absolute_paths

    cfg = config_with_overrides(["storage_path=s3://raykd-studies/runs"])
    assert str(cfg.storage_path) == "s3://raykd-studies/runs"
    # trials run elsewhere: the URI survives the absolute-path pass, a local path is still resolved
    assert absolute_paths(cfg).storage_path == "s3://raykd-studies/runs"
    assert config_with_overrides(["storage_path=gs://b/runs/"]).storage_path == "gs://b/runs"
    assert Path(absolute_paths(config_with_overrides(["storage_path=runs"])).storage_path).is_absolute()
    with pytest.raises(ConfigError, match="storage_path.*unsupported scheme ftp://"):
        config_with_overrides(["storage_path=ftp://host/runs"])
