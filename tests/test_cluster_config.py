"""The cluster material checked the way Ray reads it: offline, no cloud credentials.

- ray-cluster.yaml goes through Ray's own launcher path (`prepare_config` fills in the AWS
  defaults exactly as `ray up` does, then `validate_config` runs Ray's JSON schema and its
  extra checks), and a broken copy must be rejected by the same code.
- cluster/runtime_env.yaml is parsed like `ray job submit --runtime-env` parses it, and its
  excludes are applied by Ray's own packaging code to a throw-away tree.
- The KubeRay manifests are checked field by field where it matters: API version, kinds,
  pinned Ray version in every image, GPU requests, token auth, dashboard exposure, the job.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _ray_pin() -> str:
    """The Ray version pyproject pins (`ray[...]==X`)."""
    for dep in _pyproject()["project"]["dependencies"]:
        m = re.fullmatch(r"ray(\[[^\]]*\])?==([\w.]+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError("pyproject.toml does not pin ray with ==")


def _torch_pin() -> str:
    """The torch version scripts/setup.sh installs first."""
    m = re.search(r"torch==([\w.]+)", (ROOT / "scripts" / "setup.sh").read_text())
    assert m, "scripts/setup.sh does not pin torch"
    return m.group(1)


def _dep_name(req: str) -> str:
    return re.split(r"[\[<>=!~;\s]", req, maxsplit=1)[0].lower().replace("_", "-")


def _load(path: Path):
    return yaml.safe_load(path.read_text())


# --------------------------------------------------------------------------- versions


def test_installed_ray_is_the_pinned_one():
    import ray

    assert ray.__version__ == _ray_pin(), (
        "the schema and validator these tests use come from the installed Ray")


# ------------------------------------------------------------------ ray-cluster.yaml


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _ray_validate(config: dict) -> dict:
    """What `ray up` does before it touches AWS: fill in the provider defaults, then
    validate (schema + Ray's own consistency checks). Returns the prepared config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def launcher() -> dict:
    return _load(ROOT / "ray-cluster.yaml")


@pytest.fixture(scope="module")
def prepared(launcher) -> dict:
    return _ray_validate(launcher)


def test_launcher_config_validates_with_rays_schema(launcher, prepared):
    # The file as written must satisfy the schema on its own, not only after defaults.
    jsonschema.validate(launcher, _ray_schema())
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("breakage, message", [
    ("unknown top-level key", r"'dashboard_host' was unexpected"),
    ("max_workers of the wrong type", r"'four' is not of type 'integer'"),
    ("fractional GPU resource", r"0\.5 is not of type 'integer'"),
    ("head type that does not exist", r"head_node_type` must be one of"),
    ("unknown node-type key", r"'gpus' was unexpected")])
def test_launcher_validation_rejects_broken_copies(launcher, breakage, message):
    """Negative control: the same validator refuses a copy broken in one place."""
    bad = copy.deepcopy(launcher)
    if breakage == "unknown top-level key":
        bad["dashboard_host"] = "127.0.0.1"
    elif breakage == "max_workers of the wrong type":
        bad["max_workers"] = "four"
    elif breakage == "fractional GPU resource":
        bad["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    elif breakage == "head type that does not exist":
        bad["head_node_type"] = "no_such_type"
    elif breakage == "unknown node-type key":
        bad["available_node_types"]["gpu_worker"]["gpus"] = 1
    with pytest.raises((jsonschema.ValidationError, ValueError), match=message):
        _ray_validate(bad)


def test_launcher_has_a_cpu_head_and_gpu_workers(prepared):
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] >= 1
    gpu = [t for name, t in types.items() if name != prepared["head_node_type"]
           and t["resources"].get("GPU", 0) >= 1]
    assert gpu, "no worker node type offers a GPU"
    assert all(t["max_workers"] <= prepared["max_workers"] for t in gpu)


def test_launcher_dashboard_on_localhost_and_token_auth_everywhere(prepared):
    head = " ".join(prepared["head_start_ray_commands"])
    worker = " ".join(prepared["worker_start_ray_commands"])
    assert "ray start --head" in head and "ray start --address" in worker
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", head), head
    assert "0.0.0.0" not in head
    # Ray 2.60 enables token auth by itself only for local ray.init() clusters: a node
    # started with `ray start` must be told, the head and every worker alike.
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in worker
    assert "--env RAY_AUTH_MODE=token" in prepared["docker"]["run_options"]
    # The shared token reaches every node, from the file `ray job submit` also reads.
    assert prepared["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_launcher_installs_pinned_torch_then_the_project(prepared):
    ray_v, torch_v = _ray_pin(), _torch_pin()
    for key in ("image", "head_image", "worker_image"):
        assert prepared["docker"][key].startswith(f"rayproject/ray:{ray_v}-py311"), key
    assert prepared["docker"]["worker_image"].endswith("-gpu")
    for cmds in (prepared["head_setup_commands"], prepared["worker_setup_commands"]):
        text = "\n".join(cmds)
        torch_at = text.find(f"torch=={torch_v}")
        project_at = text.find("pip install -q ~/mer-ray-wheel/")
        assert 0 <= torch_at < project_at, "torch must be installed (pinned) before mer-ray"
    assert "download.pytorch.org/whl/cu" in "\n".join(prepared["worker_setup_commands"])
    # The head needs boto3 for the autoscaler; replacing Ray's default head commands
    # must keep it.
    assert any("boto3" in c for c in prepared["head_setup_commands"])
    # The wheel folder it installs from is the one the docs tell you to build.
    assert prepared["file_mounts"]["~/mer-ray-wheel"] == "./.whl"


# ------------------------------------------------------------------- runtime_env.yaml


@pytest.fixture(scope="module")
def runtime_env() -> dict:
    # Exactly how `ray job submit --working-dir . --runtime-env FILE` builds it.
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args

    return parse_runtime_env_args(runtime_env=str(CLUSTER / "runtime_env.yaml"),
                                  working_dir=".")


def test_runtime_env_is_a_valid_ray_runtime_env(runtime_env):
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**runtime_env)
    assert env["working_dir"] == "."
    assert set(runtime_env) <= {"working_dir", "excludes", "pip", "env_vars"}


def test_runtime_env_pip_is_pyproject_minus_ray(runtime_env):
    pip = runtime_env["pip"]
    packages = pip["packages"] if isinstance(pip, dict) else pip
    names = {_dep_name(p) for p in packages}
    assert "ray" not in names, "a job must never reinstall the cluster's Ray"
    wanted = {_dep_name(d) for d in _pyproject()["project"]["dependencies"]} - {"ray"}
    assert wanted <= names, f"missing from runtime_env pip: {sorted(wanted - names)}"
    assert f"torch=={_torch_pin()}" in packages


def test_job_env_fills_the_train_api_and_folds_no_lines(runtime_env, kuberay):
    """A job's driver prints every progress line (Ray would fold lines that differ only in
    numbers) but not the raylet's worker-count warnings, as an embedded Ray does; its
    Train runs are tracked; the KubeRay RayJob runs with the same env."""
    from mer_ray.distributed.cluster import CONSOLE_ENV

    assert {**CONSOLE_ENV, "RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}.items() \
        <= runtime_env["env_vars"].items()
    job = yaml.safe_load(kuberay["RayJob"]["spec"]["runtimeEnvYAML"])
    assert job["env_vars"] == runtime_env["env_vars"]


def test_runtime_env_excludes_keep_data_out_and_code_in(runtime_env, tmp_path):
    """Ray's own packager, on a tree shaped like a user's checkout."""
    from ray._private.runtime_env.packaging import create_package

    tree = tmp_path / "repo"
    keep = ["mer_ray/cli/main.py", "mer_ray/data/store.py", "mer_ray/data/synth.py",
            "ensembles/load.py", "pyproject.toml", "README.md", "cluster/runtime_env.yaml"]
    drop = [".venv/lib/site.py", ".git/HEAD", "data/features/a.npy", "data/labels.csv",
            "runs/r1/members/m.parquet", "demo-run/store/part-0.parquet", "build/lib/x.py",
            "mer_ray.egg-info/PKG-INFO", "mer_ray/__pycache__/cli.cpython-311.pyc",
            "stores/s/manifest.json", "features/f.npy", "my-run/m.parquet", "x.pt"]
    for rel in keep + drop:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("x")
    out = tmp_path / "pkg.zip"
    create_package(str(tree), out, include_gitignore=False,
                   excludes=runtime_env["excludes"])
    packed = set(zipfile.ZipFile(out).namelist())
    assert set(keep) <= packed, sorted(set(keep) - packed)
    assert not set(drop) & packed, sorted(set(drop) & packed)


def test_runtime_env_excludes_name_the_usual_suspects(runtime_env):
    excl = set(runtime_env["excludes"])
    for needed in ("/.venv", "/.git", "/data", "/runs", "/demo-run", "/build",
                   "*.egg-info"):
        assert needed in excl, needed
    # Unanchored names would also drop packages such as mer_ray/data.
    assert "data" not in excl and "data/" not in excl


# ---------------------------------------------------------------------------- KubeRay


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _containers(spec: dict):
    groups = [("head", spec["headGroupSpec"])] + [
        (g["groupName"], g) for g in spec["workerGroupSpecs"]]
    for name, group in groups:
        for c in group["template"]["spec"]["containers"]:
            yield name, group, c


@pytest.fixture(scope="module")
def kuberay() -> dict:
    docs = {}
    for f in ("raycluster.yaml", "rayjob.yaml"):
        for d in _docs(KUBERAY / f):
            docs[d["kind"]] = d
    return docs


def test_kuberay_kinds_and_api_version(kuberay):
    assert set(kuberay) == {"RayCluster", "RayJob"}
    for doc in kuberay.values():
        assert doc["apiVersion"] == "ray.io/v1"
        assert doc["metadata"]["name"]


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_images_and_version_match_the_pin(kuberay, kind):
    ray_v = _ray_pin()
    spec = _cluster_spec(kuberay[kind])
    assert spec["rayVersion"] == ray_v
    for group, _, c in _containers(spec):
        image = c["image"]
        assert image.split(":", 1)[1].startswith(f"{ray_v}-py311"), (group, image)
        if group == "head":
            assert not image.endswith("-gpu"), "the head is the CPU image"


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_gpu_group_requests_gpus(kuberay, kind):
    spec = _cluster_spec(kuberay[kind])
    gpu_groups = 0
    for group, g, c in _containers(spec):
        if group == "head":
            assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {})
            continue
        limits = c["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, group
        assert c["image"].endswith("-gpu"), group
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        gpu_groups += 1
    assert gpu_groups >= 1


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_token_auth_and_no_public_service(kuberay, kind):
    spec = _cluster_spec(kuberay[kind])
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    for _, _, c in _containers(spec):
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env.get("RAY_AUTH_MODE", "token") == "token"
    host = head["rayStartParams"]["dashboard-host"]
    if kind == "RayCluster":
        assert host == "127.0.0.1"  # reached with kubectl port-forward only
    else:
        # The submitter pod and the operator talk to the job API through the head Service.
        assert host == "0.0.0.0"


def test_kuberay_rayjob_runs_mer_ray_tune(kuberay):
    spec = kuberay["RayJob"]["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "mer_ray.cli"] or argv[0] == "mer-ray"
    assert "tune" in argv and "--store" in argv and "--out" in argv
    assert spec["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    names = {_dep_name(p) for p in env["pip"]["packages"]}
    assert "ray" not in names and "torch" in names
    # The same dependency list as the `ray job submit` runtime env.
    local = _load(CLUSTER / "runtime_env.yaml")
    assert env["pip"]["packages"] == local["pip"]["packages"]


# ------------------------------------------------------------------------- Dockerfile


def test_dockerfile_builds_on_the_pinned_ray_and_torch():
    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE=(\S+)$", text, re.M).group(1)
    assert base == f"rayproject/ray:{_ray_pin()}-py311-gpu"
    assert f"torch=={_torch_pin()}" in text
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:].count("!mer_ray") == 1


# -------------------------------------------------------------------------- auth, docs


def test_no_cluster_file_turns_token_auth_off():
    files = [ROOT / "ray-cluster.yaml", *sorted(p for p in CLUSTER.rglob("*") if p.is_file())]
    for f in files:
        text = f.read_text()
        assert not re.search(r"RAY_AUTH_MODE\s*[=:]\s*\"?disabled", text), f
        assert not re.search(r"mode:\s*disabled", text), f
