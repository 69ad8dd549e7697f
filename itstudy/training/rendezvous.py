"""torch.distributed's rendezvous on loopback when every worker of a run is on one loopback node.

Rank 0 of a multi-worker run hosts the TCPStore through which the workers find each other. torch
binds that store's server to every interface (`::`) whatever host it is given; only a socket
handed over already bound (`master_listen_fd`) keeps it on one address. Ray Train's torch backend
(`ray.train.torch.config._TorchBackend.on_start`) lets rank 0 create the store inside
`init_process_group`, so `LoopbackTorchConfig` replaces that step when every worker's node address
is loopback (a study's own local Ray, `cluster/local-up.sh`): rank 0 serves the store on a socket
bound to 127.0.0.1 and every rank joins it as a client (torch's "agent store" mode of `env://`,
which torchrun uses the same way). On any other cluster Ray's own setup runs unchanged.

Private Ray API, kept to the four names imported below; checked against Ray 2.60.0 and torch 2.13.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import ray
import torch.distributed as dist
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

LOOPBACK = "127.0.0.1"
AGENT_STORE_VARIABLE = "TORCHELASTIC_USE_AGENT_STORE"
"""With "True", torch's `env://` rendezvous joins the store at MASTER_ADDR:MASTER_PORT as a client on every rank."""

_served: list[dist.TCPStore] = []
"""The store rank 0 serves, kept alive in its worker process until the backend shuts down."""


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """Ray Train's `TorchConfig`, with the rendezvous store on 127.0.0.1 when all workers are on a loopback node."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig):
        addresses = worker_group.execute(ray.util.get_node_ip_address)
        if len(worker_group) < 2 or not all(ipaddress.ip_address(address).is_loopback for address in addresses):
            return super().on_start(worker_group, backend_config)
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus > 0 else "gloo")
        port = worker_group.execute_single(0, _serve_store, len(worker_group), backend_config.timeout_s)
        worker_group.execute(_join_store, port)
        if not isinstance(worker_group, V1WorkerGroup):  # as Ray's own on_start: torch's variables for V2 workers
            worker_group.execute(_set_torch_distributed_env_vars)
        setup = [
            worker_group.execute_single_async(
                rank, _setup_torch_process_group, backend=backend, world_rank=rank, world_size=len(worker_group),
                init_method="env://", timeout_s=backend_config.timeout_s,
            )
            for rank in range(len(worker_group))
        ]
        ray.get(setup)

    def on_shutdown(self, worker_group, backend_config):
        super().on_shutdown(worker_group, backend_config)
        worker_group.execute_single(0, _served.clear)


def _serve_store(world_size: int, timeout_s: int) -> int:
    """On rank 0: serve the rendezvous store on a socket bound to 127.0.0.1; its port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(world_size)
    port = listener.getsockname()[1]
    _served.append(
        dist.TCPStore(
            LOOPBACK, port, world_size, is_master=True, timeout=timedelta(seconds=timeout_s),
            wait_for_workers=False, master_listen_fd=listener.detach(),
        )
    )
    return port


def _join_store(port: int) -> None:
    os.environ.update({"MASTER_ADDR": LOOPBACK, "MASTER_PORT": str(port), AGENT_STORE_VARIABLE: "True"})
