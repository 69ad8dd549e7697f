"""Whether the Ray cluster that RAY_ADDRESS names can be used, asked in seconds before anything starts.

`ray.init(address=...)` waits for an address that nothing listens on without a limit (and a
job-server URL is not an address it can join), so `itstudy run` and `itstudy train` ask first.
Plain Python (no Ray), so that the command line asks before it imports Ray or MLflow.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from itstudy.config import ConfigError

RAY_ANSWER_TIMEOUT_S = 5.0
"""How long the address in RAY_ADDRESS may take to accept a connection before the command gives up."""


def check_ray_address() -> None:
    """Refuse a RAY_ADDRESS that cannot work: a job-server URL, or a host:port where nothing accepts a connection."""
    address = os.environ.get("RAY_ADDRESS", "")
    parsed = urlparse(address if "://" in address else f"ray-gcs://{address}")
    if parsed.scheme in ("http", "https"):
        raise ConfigError(
            f"RAY_ADDRESS={address} is a job-server address: submit the study with `ray job submit` "
            f"(cluster/README.md), or unset RAY_ADDRESS to run on a local Ray"
        )
    if not address or address in ("auto", "local") or parsed.port is None:
        return  # no address, or one Ray resolves itself (from its session files)
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=RAY_ANSWER_TIMEOUT_S).close()
    except OSError as error:
        raise ConfigError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there ({error.strerror or type(error).__name__}); "
            f"start it (cluster/local-up.sh) or unset RAY_ADDRESS to run on a local Ray"
        ) from None
