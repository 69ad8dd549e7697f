"""`itstudy ui`: the MLflow UI on a study's tracking store.

`itstudy.tracking.study_store` turns what a user types (an experiment file, a study name, or
nothing) into the tracking URI and the MLflow experiment name. `ui_command` starts
`mlflow server` in the foreground with settings that suit one person's study: the study's store
(SQLite by default), one worker, job execution off (about 0.4 GB instead of nine processes and
1.4 GB), loopback only. On a cluster, run it on the head node and forward the port:

    ssh -L 5000:127.0.0.1:5000 HEAD_NODE            # then open http://127.0.0.1:5000
    kubectl port-forward pod/HEAD_POD 5000:5000     # KubeRay

Refuses remote stores: a study that logs to an `http(s)://` tracking server already has that
server's UI, whose address is printed instead (once it answered, within seconds). Refuses an
SQLite store that does not exist or is damaged, and a port that is not one. Refuses a port that is taken before printing any
address (the user would otherwise browse whatever other store listens there), and exits non-zero
when the server does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from itstudy.config import ConfigError
from itstudy.errors import UserError
from itstudy.tracking import artifact_root, check_readable, comparison_view_link, experiment_id_of, study_store

READY_TIMEOUT_S = 90.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def server_command(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """`mlflow server` on an SQLite store: one worker, loopback unless asked otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        raise ConfigError(
            f"tracking URI {tracking_uri!r}: the UI serves a local SQLite store; a tracking server "
            f"already has its UI, open {tracking_uri} in a browser"
        )
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", tracking_uri,
        "--default-artifact-root", artifact_root(tracking_uri),
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip


class UIError(UserError):
    """The UI server cannot serve: its port is taken, or it stopped on its own."""


def check_port_free(host: str, port: int) -> None:
    """Refuse a port some other process listens on (bound as the server would bind it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UIError(
                f"port {port} on {host} is taken ({error.strerror}): another server, perhaps another store's UI, "
                f"listens there; choose a free one with --port"
            ) from None


def server_env() -> dict[str, str]:
    # Job execution starts extra worker processes that a read-mostly UI does not need.
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start_server(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000, log_file: Path | None = None) -> subprocess.Popen:
    """Start the UI server in the background and wait until it answers /health; the caller stops it."""
    output = open(log_file, "w") if log_file else subprocess.DEVNULL  # noqa: SIM115 (the child holds it)
    process = subprocess.Popen(server_command(tracking_uri, host, port), env=server_env(), stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(f"http://{host}:{port}", process)
    except BaseException:
        stop_server(process)
        raise
    return process


def wait_until_ready(url: str, process: subprocess.Popen, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {process.returncode} before answering {url}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"mlflow server did not answer {url}/health within {timeout_s:.0f} s")


def stop_server(process: subprocess.Popen) -> None:
    """Terminate the server (and wait for it), killing it if it does not stop within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ui_command(study_or_experiment: str | None = None, port: int = 5000, host: str = "127.0.0.1") -> None:
    """The `itstudy ui` command: serve the study's store until Ctrl-C."""
    if not 1 <= port <= 65535:
        raise UIError(f"--port {port}: a TCP port is a number from 1 to 65535")
    store = study_store(study_or_experiment)
    if store.tracking_uri.startswith(("http://", "https://")):
        check_readable(store.tracking_uri)  # within seconds: an address that answers, or one line
        print(f"This study logs to the tracking server {store.tracking_uri}: open it in a browser.")
        return
    command = server_command(store.tracking_uri, host, port)
    check_port_free(host, port)
    check_readable(store.tracking_uri)
    where = f"experiment '{store.experiment}'" if store.experiment else "every experiment"
    experiment_id = experiment_id_of(store.tracking_uri, store.experiment) if store.experiment else None
    # MLflow 3.17 picks its GenAI or Model-training mode from the address: open the study's comparison view.
    page = comparison_view_link(experiment_id) if experiment_id else ""
    print(f"MLflow UI on {store.tracking_uri} ({where}): http://{host}:{port}/{page}")
    if host in LOOPBACK:
        print(f"From another machine: ssh -L {port}:127.0.0.1:{port} THIS_HOST, then open http://127.0.0.1:{port}")
    else:
        print("Warning: the MLflow UI has no authentication; anyone who reaches this address can read and delete runs.")
    process = subprocess.Popen(command, env=server_env())
    # A `kill` of this command must stop the server too instead of orphaning it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        code = process.wait()
    except KeyboardInterrupt:
        return
    finally:
        stop_server(process)
    if code != 0:
        raise UIError(f"mlflow server on port {port} exited with code {code} (its output is above)")
