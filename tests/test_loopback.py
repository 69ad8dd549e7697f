"""A Ray that a study starts on one machine listens on 127.0.0.1 only, keeps its token private, and
never writes a tracking secret into its session folder (itstudy/loopback.py, tracking.worker_env)."""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
import sys
from pathlib import Path

import psutil
import pytest
import ray

from itstudy.loopback import auth_token_path, private_auth_token
from itstudy.sweep.cluster import ray_session
from itstudy.tracking import worker_env
from itstudy.tracking.store import SECRET_MLFLOW_VARIABLES


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh home folder, with Ray's token taken from the default file there."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    return tmp_path / "home"


def test_a_missing_token_file_is_created_private(home):
    private_auth_token()
    token = home / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert len(bytes.fromhex(token.read_text())) == 32  # 256 random bits, as Ray generates them


def test_a_token_file_readable_by_others_is_made_private_and_kept(home):
    token = home / ".ray" / "auth_token"
    token.parent.mkdir(parents=True)
    token.write_text("abc123")
    token.chmod(0o644)  # as `ray get-auth-token --generate` and ray.init leave it
    private_auth_token()
    assert auth_token_path() == token
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == "abc123"


def test_no_tracking_secret_goes_into_the_workers_runtime_environment(monkeypatch, tmp_path):
    sqlite_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name in SECRET_MLFLOW_VARIABLES:
        monkeypatch.setenv(name, f"secret-{name}")
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")  # a setting, not a secret: it travels
    env = worker_env(sqlite_uri)
    assert env["MLFLOW_TRACKING_URI"] == sqlite_uri and env["MLFLOW_TRACKING_INSECURE_TLS"] == "true"
    assert not any("secret-" in value for value in env.values())


def _outside_loopback(process: psutil.Process) -> list[str]:
    """The addresses `process` listens on that are not loopback (an IPv4-mapped ::ffff:127.0.0.1 is)."""
    outside = []
    for connection in process.net_connections(kind="inet"):
        if connection.status != psutil.CONN_LISTEN:
            continue
        address = ipaddress.ip_address(connection.laddr.ip)
        address = getattr(address, "ipv4_mapped", None) or address
        if not address.is_loopback:
            outside.append(f"{process.name()} (pid {process.pid}) on {connection.laddr.ip}:{connection.laddr.port}")
    return outside


@ray.remote
def _credential() -> tuple[str | None, str | None]:
    return os.environ.get("MLFLOW_TRACKING_PASSWORD"), os.environ.get("MLFLOW_TRACKING_URI")


def _two_worker_rendezvous(tmp_path: Path) -> str:
    """A 2-worker Ray Train run with the study's torch config; what its rank 0 wrote about its sockets."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from itstudy.training.rendezvous import LoopbackTorchConfig

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    TorchTrainer(
        _rank0_listening,
        train_loop_config={"out": str(tmp_path / "rank0.txt")},
        torch_config=LoopbackTorchConfig(),
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="rendezvous", storage_path=str(tmp_path / "ray_results")),
    ).fit()
    return (tmp_path / "rank0.txt").read_text()


@pytest.mark.ray
def test_a_local_ray_listens_on_loopback_and_its_session_folder_holds_no_secret(tmp_path, monkeypatch):
    secret = f"itstudy-test-secret-{secrets.token_hex(8)}"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    uri = f"sqlite:///{tmp_path / 'store-marker-7c1f' / 'mlflow.db'}"
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    with ray_session(uri) as worker_uri:  # as `itstudy run` starts its local Ray
        assert ray.get(_credential.remote()) == (secret, worker_uri)  # the worker read it from its node
        session = Path(ray._private.worker._global_node.get_session_dir_path())
        started = [child for child in psutil.Process().children(recursive=True) if child.pid not in before]
        assert {"gcs_server", "raylet"} <= {child.name() for child in started}
        outside = [line for process in [psutil.Process(), *started] for line in _outside_loopback(process)]
        # torch's rendezvous store, which torch binds to every interface unless handed a bound socket
        rendezvous = _two_worker_rendezvous(tmp_path)
    assert not outside, f"Ray listens outside 127.0.0.1: {outside}"
    assert rendezvous == "world size 2; outside loopback: []", rendezvous
    assert stat.S_IMODE(auth_token_path().stat().st_mode) == 0o600

    files = [path for path in session.rglob("*") if path.is_file() and not path.is_symlink()]
    holding = [str(path) for path in files if secret.encode() in path.read_bytes()]
    assert not holding, f"the tracking secret is written in {holding}"
    # The check can see: Ray does log the runtime environment, whose (non-secret) URI is there.
    assert any(b"store-marker-7c1f" in path.read_bytes() for path in files)


def _rank0_listening(config: dict) -> None:
    """A Ray Train worker: once the process group is up, rank 0 writes where its process listens outside loopback."""
    import torch.distributed as dist

    dist.barrier()
    if dist.get_rank() == 0:
        outside = _outside_loopback(psutil.Process())
        Path(config["out"]).write_text(f"world size {dist.get_world_size()}; outside loopback: {outside}")
    dist.barrier()
