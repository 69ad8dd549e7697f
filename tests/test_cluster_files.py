"""The operator files of cluster/: what `ray job submit --working-dir .` uploads with them.

The upload is built here by Ray's own packer (the function `ray job submit` calls), over a copy of
the repository's tracked files plus the local clutter a checkout accumulates, so the test sees
exactly what a cluster would receive.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse
from zipfile import ZipFile

import yaml
from ray._private.runtime_env.packaging import create_package

REPO = Path(__file__).resolve().parents[1]
CLUTTER = [  # what a working checkout holds besides its tracked files; none of it may travel
    ".git/HEAD",
    ".venv/lib/python3.11/site-packages/torch/__init__.py",
    "itstudy-runs/mlflow.db",
    ".itstudy-cache/tasks/task001.json",
    "data/superni/tasks/task001.json",
    "mlruns/0/meta.yaml",
    "itstudy/data/__pycache__/superni.cpython-311.pyc",
    "itstudy.egg-info/PKG-INFO",
    "outputs/model.safetensors",
]


def _tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [name for name in listed.splitlines() if (REPO / name).is_file()]


def _uploaded(tmp_path: Path) -> set[str]:
    """The file names of the working_dir package Ray builds from a cluttered copy of the repository."""
    checkout = tmp_path / "checkout"
    for name in _tracked_files() + CLUTTER:
        target = checkout / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_file():
            shutil.copy(REPO / name, target)
        else:
            target.write_text("clutter")
    excludes = yaml.safe_load((REPO / "cluster/runtime_env.yaml").read_text())["excludes"]
    package = tmp_path / "working_dir.zip"
    create_package(str(checkout), package, include_gitignore=True, excludes=excludes)
    return {name for name in ZipFile(package).namelist() if not name.endswith("/")}


def test_the_upload_holds_every_file_the_package_needs_and_no_local_state(tmp_path):
    uploaded = _uploaded(tmp_path)
    needed = [
        name
        for name in _tracked_files()
        if name.startswith(("itstudy/", "dashboards/", "experiments/")) or name in ("pyproject.toml", "constraints.txt")
    ]
    assert "itstudy/data/superni.py" in needed and "dashboards/templates/report.html.j2" in needed
    assert "itstudy/training/superni_lengths.json" in needed  # package data, not only modules
    missing = sorted(set(needed) - uploaded)
    assert not missing, f"cluster/runtime_env.yaml leaves out files the job needs: {missing}"
    leaked = sorted(name for name in uploaded if name in CLUTTER)
    assert not leaked, f"the upload carries local state: {leaked}"


def test_itstudy_ui_on_a_taken_port_fails_in_one_line_before_printing_an_address():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ui = subprocess.run(
            [sys.executable, "-m", "itstudy.cli", "ui", "--port", str(port)], cwd=REPO, capture_output=True, text=True, timeout=120
        )
    assert ui.returncode != 0
    assert ui.stderr.strip().count("\n") == 0 and f"port {port} on 127.0.0.1 is taken" in ui.stderr
    assert "http://" not in ui.stdout


# --- the node image and the cluster files ------------------------------------------------------


def _pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


def test_the_dockerfile_builds_on_the_pinned_ray_and_installs_like_make_setup():
    dockerfile = (REPO / "Dockerfile").read_text()
    pins = _pins()
    assert re.search(r"^ARG VARIANT=gpu$", dockerfile, re.MULTILINE)
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert base == f"rayproject/ray:{pins['ray']}-py311-${{VARIANT}}"  # the cluster's Ray is the client's
    makefile = (REPO / "Makefile").read_text()
    for install in (f"pip install -q torch=={pins['torch']}", "pip install -q -c constraints.txt"):
        assert install in makefile  # the steps the image repeats, as CI's venv runs them
    assert f"pip install --no-cache-dir $TORCH_INDEX torch=={pins['torch']}" in dockerfile
    assert "pip install --no-cache-dir -c constraints.txt ." in dockerfile
    assert "pip uninstall -y itstudy" in dockerfile  # jobs import the package from their upload only
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert {".git", ".venv", "itstudy-runs"} <= set(ignored) and "itstudy" not in ignored


def test_the_aws_launcher_file_passes_rays_own_validation_and_syncs_no_local_state():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster/aws.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` runs first
    assert {".venv", ".git", "itstudy-runs"} <= set(config["rsync_exclude"])
    assert config["docker"]["head_image"].endswith("itstudy:deps-cpu")
    assert config["docker"]["worker_image"].endswith("itstudy:deps-gpu")
    start = " ".join(config["head_start_ray_commands"])
    assert "--port $MLFLOW_PORT" in start and "MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT" in start


_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_POD = {"type": "object", "required": ["spec"], "properties": {"spec": {"type": "object", "required": ["containers"]}}}
RAYJOB_SCHEMA = {
    # The RayJob fields this repository uses, as the KubeRay v1.5 CRD (ray.io/v1) declares them.
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["entrypoint", "rayClusterSpec"],
            "properties": {
                "entrypoint": {"type": "string"},
                "runtimeEnvYAML": {"type": "string"},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "submitterPodTemplate": _POD,
                "rayClusterSpec": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["headGroupSpec"],
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "authOptions": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"mode": {"enum": ["disabled", "token"]}, "secretName": {"type": "string"}},
                        },
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "autoscalerOptions": {
                            "type": "object",
                            "properties": {
                                "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                                "idleTimeoutSeconds": {"type": "integer"},
                            },
                        },
                        "headGroupSpec": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["template"],
                            "properties": {"rayStartParams": _STRINGS, "template": _POD, "serviceType": {"type": "string"}},
                        },
                        "workerGroupSpecs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["groupName", "template"],
                                "properties": {
                                    "groupName": {"type": "string"},
                                    "replicas": {"type": "integer", "minimum": 0},
                                    "minReplicas": {"type": "integer", "minimum": 0},
                                    "maxReplicas": {"type": "integer", "minimum": 0},
                                    "rayStartParams": _STRINGS,
                                    "template": _POD,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def _containers(document: dict) -> list[dict]:
    spec = document["spec"]
    if document["kind"] == "Deployment":
        return spec["template"]["spec"]["containers"]
    cluster = spec["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"], spec["submitterPodTemplate"]]
    pods += [group["template"] for group in cluster["workerGroupSpecs"]]
    return [container for pod in pods for container in pod["spec"]["containers"]]


def test_the_kuberay_file_matches_the_crd_and_its_settings_take_effect():
    import jsonschema

    documents = {doc["kind"]: doc for doc in yaml.safe_load_all((REPO / "cluster/kuberay-rayjob.yaml").read_text())}
    job = documents["RayJob"]
    jsonschema.validate(job, RAYJOB_SCHEMA)
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}  # the operator makes and mounts the token
    assert not any(var["name"].startswith("RAY_AUTH") for c in _containers(job) for var in c.get("env", []))
    scaled = [group for group in cluster["workerGroupSpecs"] if group["minReplicas"] != group["maxReplicas"]]
    assert not scaled or cluster["enableInTreeAutoscaling"] is True  # min/max do nothing otherwise
    images = {container["image"] for kind in ("RayJob", "Deployment") for container in _containers(documents[kind])}
    assert images <= {"FILL-IN-REGISTRY/itstudy:deps-cpu", "FILL-IN-REGISTRY/itstudy:deps-gpu"}  # ./Dockerfile
    # MLflow 3 refuses a Host header it was not told about: the one the Ray pods send must be allowed.
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    host = urlparse(runtime_env["env_vars"]["MLFLOW_TRACKING_URI"]).netloc
    (server,) = _containers(documents["Deployment"])
    (allowed,) = [arg.split("=", 1)[1] for arg in server["command"] if arg.startswith("--allowed-hosts=")]
    assert host in allowed.split(",") and f"--port={host.split(':')[1]}" in server["command"]
    assert documents["Service"]["spec"]["ports"][0]["port"] == int(host.split(":")[1])
