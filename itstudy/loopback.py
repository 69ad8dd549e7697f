"""A Ray started on this machine listens on 127.0.0.1 only, and its token file is private.

`itstudy run` and `itstudy train` without $RAY_ADDRESS start a single-node Ray themselves; nothing
outside this machine needs to reach it, so none of its servers (GCS, raylet, object manager, core
workers, dashboard and runtime-env agents) may listen on another interface. `cluster/local-up.sh`
does the same for `ray start` with the same variable and `--node-ip-address=127.0.0.1`.

Why a variable and not only `_node_ip_address="127.0.0.1"`: on Linux Ray replaces a loopback node
address by the machine's routable one (`resolve_ip_for_localhost`), and its servers then listen on
every interface. It keeps 127.0.0.1 where it believes multi-node clusters are unavailable (its
macOS and Windows default), which is what `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` declares; every
server then binds 127.0.0.1 (measured in docs/reliability.md, "Loopback and secrets"). Rank 0
of a multi-worker run serves torch.distributed's rendezvous store, which torch binds to every
interface whatever address it is given: `itstudy.training.rendezvous` hands it a socket bound to
127.0.0.1 when every worker is on a loopback node.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

LOOPBACK = "127.0.0.1"
SINGLE_NODE_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for multi-node clusters; "0" keeps a loopback node address as it is."""


def local_ray_options() -> dict[str, str]:
    """ray.init arguments for a Ray this process starts: loopback only, with a private token file.

    Sets the single-node switch for the rest of this process (Ray's processes started from it
    inherit it; this process read Ray's constant at import, so it is set there too): a process
    that starts its own Ray joins no other cluster.
    """
    from ray._private import ray_constants  # the constant Ray reads when it resolves a node address

    os.environ[SINGLE_NODE_VARIABLE] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    private_auth_token()
    return {"_node_ip_address": LOOPBACK}


def auth_token_path() -> Path:
    """Where Ray reads its token: $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def private_auth_token() -> None:
    """Make Ray's token file readable by its owner only, creating it (mode 0600) when it is missing.

    Ray writes a missing token file with the default umask (0644): any local user could then
    read the token and run code on the cluster. A token given in $RAY_AUTH_TOKEN needs no file,
    and neither does a Ray with authentication turned off (RAY_AUTH_MODE=disabled).
    """
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return
    path = auth_token_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        return
    with os.fdopen(handle, "w") as token:
        token.write(secrets.token_hex(32))  # the form of Ray's own generator: 256 random bits in hex
