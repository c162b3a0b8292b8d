"""Ray start-up and the environment of every process it starts: allocator settings, zero-copy
tensor transport, quiet logs, and a clear error for an unreachable cluster."""

from __future__ import annotations

from typing import Any

import ray

from ondistill.config import ConfigError

# glibc hands every allocation over 128 KiB-32 MiB straight back to the kernel when it is
# freed, so each [chunk, vocab] temporary of the loss, and every activation, is page-faulted in
# afresh on the next step. On the 2-core VMs here the faults cost more than the arithmetic
# (scripts/profile_train.py: KD loss of 512 tokens x 49k vocab 2.1 s -> 1.3 s, page faults
# 1.87M -> 0.69M). Keep freed memory in the process instead; RSS stays at the step's peak.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(8 << 30)}

# By default a torch tensor crosses Ray pickled through torch.save: a serialize copy, a copy
# into the object store, a deserialize copy, at ~200 MB/s per hop on the 2-core VMs (0.54 GB of
# teacher hidden states: 2.6 s teacher -> driver, 2.6 s driver -> student). Ray's zero-copy
# reducer sends the tensor's bytes as an out-of-band buffer and the receiver maps them from the
# store (0.06-0.4 s for the same hop). The price: a received CPU tensor views the shared store,
# so no stage may write into a tensor it received (none does; they copy or build new ones).
ZERO_COPY_ENV = {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1"}


def quiet_transport_warnings() -> None:
    """Every process warns once that zero-copy tensors are read-only and once that torch got a
    non-writable array; both describe the contract above, not a fault."""
    import warnings

    warnings.filterwarnings("ignore", message="Zero-copy tensor serialization is enabled")
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    # vLLM's CPU build touches a deprecated torch alias at import; nothing for a user to do.
    warnings.filterwarnings("ignore", message=".*torch.distributed.reduce_op.*is deprecated")


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Ray retries an unreachable head for minutes, warning all the while; ask the port first
    and say what is wrong in one sentence."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"ray.address={address} is not host:port (or auto); e.g. "
            "ray.address=10.0.0.5:6379, or leave it empty for a local Ray."
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(
            f"ray.address={address}: no Ray cluster answers there ({e.strerror or e}"
            "); start its head with scripts/cluster.sh head, or leave ray.address "
            "empty for a local Ray."
        ) from None


def init_ray(address: str = "", num_cpus: int = 0, **kwargs: Any) -> None:
    """Start a local Ray (default) or join a cluster (address='auto' or 'host:port')."""
    import os

    if ray.is_initialized():
        return
    # Engine logs and model-loading bars from actors would bury the driver's step bar.
    env = {
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "VLLM_LOGGING_LEVEL": "ERROR",
        "VLLM_CONFIGURE_LOGGING": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TORCH_CPP_LOG_LEVEL": "ERROR",
        **MALLOC_ENV,
        **ZERO_COPY_ENV,
    }
    kwargs.setdefault(
        "runtime_env", {"env_vars": env, "worker_process_setup_hook": quiet_transport_warnings}
    )
    # The driver's serializer reads the switch when it connects; ray was imported before it.
    from ray._private import ray_constants

    ray_constants.RAY_ENABLE_ZERO_COPY_TORCH_TENSORS = True
    quiet_transport_warnings()
    if address:
        if address != "auto":
            check_reachable(address)
        ray.init(address=address, **kwargs)
    else:
        # Actors ask for 1 CPU each as a placement token; locally that must not exceed the
        # count Ray believes in, so give it at least 8 (threads are set per actor).
        # address="local": a new instance of our own, even where a `ray start` cluster (or the
        # stale file of one) is on the machine, which ray.init() would otherwise join. Its
        # token authentication is on (Ray generates the token); the banner saying so, and
        # "Started a local Ray instance", are not for the user of a local run.
        import logging

        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
        ray.init(
            address="local",
            num_cpus=num_cpus or max(8, os.cpu_count() or 1),
            include_dashboard=False,
            logging_level=logging.WARNING,
            **kwargs,
        )


def free_address() -> tuple[str, int]:
    """This node's address and a free port on it: where a process group's rank 0 listens
    (the FSDP2 student's, a tensor-parallel teacher replica's)."""
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address(), port
