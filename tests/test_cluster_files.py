"""The operator files of cluster/: what `ray job submit --working-dir .` uploads with them.

The upload is built here by Ray's own packer (the function `ray job submit` calls), over a copy of
the repository's tracked files plus the local clutter a checkout accumulates, so the test sees
exactly what a cluster would receive.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import socket
import stat
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
    (allowed,) = [arg.split("=", 1)[1] for arg in server["args"] if arg.startswith("--allowed-hosts=")]
    assert host in allowed.split(",") and f"--port={host.split(':')[1]}" in server["args"]
    assert documents["Service"]["spec"]["ports"][0]["port"] == int(host.split(":")[1])


# --- what listens where, and where the secrets are ----------------------------------------------

SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "RAY_AUTH_TOKEN")


def test_the_local_cluster_binds_loopback_only_and_keeps_its_token_private():
    from ray._private import ray_constants

    from itstudy.loopback import SINGLE_NODE_VARIABLE

    script = (REPO / "cluster/local-up.sh").read_text()
    # The switch that keeps Ray on 127.0.0.1 is the one this Ray reads (a rename would silently widen it).
    assert SINGLE_NODE_VARIABLE == ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    assert f"export {SINGLE_NODE_VARIABLE}=0" in script
    ray_start = script[script.index('"$BIN/ray" start') : script.index('>"$STATE/ray.log"')]
    assert "--node-ip-address=127.0.0.1" in ray_start and "--dashboard-host=127.0.0.1" in ray_start
    mlflow_start = script[script.index('"$BIN/mlflow" server') : script.index('>"$STATE/mlflow.log"')]
    assert "--host 127.0.0.1" in mlflow_start
    assert '(umask 077 && "$BIN/ray" get-auth-token --generate' in script and "chmod 600" in script
    assert subprocess.run(["bash", "-n", "cluster/local-up.sh"], cwd=REPO).returncode == 0


def _auth_settings(ini: Path) -> dict[str, str]:
    """The basic-auth app's settings file, read as mlflow.server.auth.config reads it (that module
    imports the app, whose Flask-WTF the test environment does not install)."""
    parser = configparser.ConfigParser()
    parser.read(ini)
    return dict(parser["mlflow"])


def _fake_aws(folder: Path, answer: str) -> Path:
    """A folder with an `aws` that prints `answer`, as `aws ssm get-parameter ... --output text` would."""
    folder.mkdir()
    (folder / "aws").write_text(f"#!/bin/sh\necho '{answer}'\n")
    (folder / "aws").chmod(0o755)
    return folder


def test_aws_nodes_get_mlflow_credentials_from_a_private_file_that_mlflow_reads(tmp_path, monkeypatch):
    from mlflow.utils.credentials import read_mlflow_creds

    config = yaml.safe_load((REPO / "cluster/aws.yaml").read_text())
    region = config["provider"]["region"]
    commands = config["setup_commands"] + config["head_setup_commands"] + config["head_start_ray_commands"]
    for command in commands + config["worker_start_ray_commands"]:
        assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0, command
        assert all(f"{name}=" not in command for name in SECRET_VARIABLES)  # no secret in Ray's environment
        assert "aws ssm" not in command or f"--region {region}" in command
    # Run every node's credentials step and the head's auth settings step, with SSM faked.
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray/auth_token").write_text("token")
    path = f"{_fake_aws(tmp_path / 'bin', 'pw-from-ssm')}:{os.environ['PATH']}"
    for command in config["setup_commands"] + config["head_setup_commands"]:
        if not command.startswith("pip "):
            done = subprocess.run(["bash", "-c", command], env={"HOME": str(home), "PATH": path}, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
    credentials = home / ".mlflow/credentials"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600 and stat.S_IMODE((home / ".ray/auth_token").stat().st_mode) == 0o600
    monkeypatch.setenv("HOME", str(home))
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH_ADMIN_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    creds = read_mlflow_creds()  # what every MLflow client on the node sends
    auth = _auth_settings(home / "mlflow-auth.ini")  # what the head's server creates its user from
    assert (creds.username, creds.password) == (auth["admin_username"], "pw-from-ssm")
    assert auth["default_permission"] == "NO_PERMISSIONS" and auth["database_uri"] == f"sqlite:///{home}/mlflow-auth.db"

    start = " ".join(config["head_start_ray_commands"])
    server = start[start.index("mlflow server") : start.index("> ~/mlflow-server.log")]
    assert "--app-name basic-auth" in server and "--host 0.0.0.0" in server  # reachable by nodes, never anonymously
    assert "MLFLOW_AUTH_ADMIN_PASSWORD=\"$(aws ssm get-parameter --region" in start
    assert "mlflow[auth]==" in config["head_setup_commands"][0]  # the app's Flask-WTF, at the image's MLflow
    # Port 5000 is closed to everything but the cluster's own nodes: the group Ray creates admits
    # intra-cluster traffic and SSH, and this file adds no rule.
    assert config["provider"]["security_group"] == {"GroupName": "itstudy-cluster", "IpPermissions": []}
    assert not any("SecurityGroupIds" in node["node_config"] for node in config["available_node_types"].values())


def test_kuberay_credentials_come_from_a_secret_and_only_ray_pods_reach_mlflow(tmp_path):
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all((REPO / "cluster/kuberay-rayjob.yaml").read_text())}
    job = documents["RayJob"]
    assert not any(name in job["spec"]["runtimeEnvYAML"] for name in SECRET_VARIABLES)
    (server,) = _containers(documents["Deployment"])
    assert "--app-name=basic-auth" in server["args"]
    server_env = {var["name"]: var.get("valueFrom", {}).get("secretKeyRef") for var in server["env"]}
    cluster = job["spec"]["rayClusterSpec"]
    ray_pods = [cluster["headGroupSpec"]["template"], *(group["template"] for group in cluster["workerGroupSpecs"])]
    for pod in ray_pods:
        (container,) = pod["spec"]["containers"]
        env = {var["name"]: var.get("valueFrom", {}).get("secretKeyRef") for var in container["env"]}
        # The user the server creates is the one every Ray node logs in as.
        assert env["MLFLOW_TRACKING_USERNAME"] == server_env["MLFLOW_AUTH_ADMIN_USERNAME"] == {"name": "mlflow-credentials", "key": "username"}
        assert env["MLFLOW_TRACKING_PASSWORD"] == server_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == {"name": "mlflow-credentials", "key": "password"}
    # The app reads its settings from the ConfigMap's file, and keeps its users on the store's volume.
    mounts = {mount["name"]: mount["mountPath"] for mount in server["volumeMounts"]}
    values = {var["name"]: var.get("value") for var in server["env"]}
    assert values["MLFLOW_AUTH_CONFIG_PATH"] == f"{mounts['mlflow-auth']}/basic_auth.ini"
    ini = tmp_path / "basic_auth.ini"
    ini.write_text(documents["ConfigMap"]["data"]["basic_auth.ini"])
    database = f"sqlite:///{mounts['mlflow-store']}/mlflow-auth.db"
    assert _auth_settings(ini) == {"default_permission": "NO_PERMISSIONS", "database_uri": database}
    policy = documents["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == documents["Service"]["spec"]["selector"]
    (rule,) = policy["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"ray.io/is-ray-node": "yes"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": documents["Service"]["spec"]["ports"][0]["port"]}]
