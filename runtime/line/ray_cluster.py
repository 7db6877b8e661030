"""Ray for the commands that take ``--ray`` (``patchcore fit``/``eval``, ``patchcore-rt score``).

Ray is an optional extra (``pip install 'patchcore-rt[scale]'``): it is imported here, inside
:func:`ray_session`, only when a command was given ``--ray``, so the runtime's base install
neither needs nor loads it. Without ``--ray-address`` a local Ray is started on this machine
(and stopped afterwards); with one, the command joins that cluster (whose nodes need the
project installed and the data and bundles at the same paths). A session that is already
connected (a test, a notebook) is reused as it is.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any, Iterator

from ..errors import UsageError

INSTALL_HINT = "pip install 'patchcore-rt[scale]'"
CONNECT_TIMEOUT_S = 10.0


def check_ray_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A usage error (exit 2) when ``address`` is malformed or nothing accepts a connection
    there within ``timeout`` seconds: ``ray.init`` itself retries for many minutes."""
    if address in ("auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--ray-address {address!r}: expected HOST:PORT, ray://HOST:PORT, auto or local")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UsageError(f"--ray-address {address}: nothing answers there ({e.strerror or e}); is the Ray head "
                         "running (ray start --head) and its port reachable from here?") from None


def import_ray():
    """The ``ray`` module, or a usage error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray, which is not installed here ({INSTALL_HINT})") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to Ray (see the module docstring); yields the ``ray`` module. Errors raised inside
    Ray tasks come out as the task's own exception (so they keep their exit code)."""
    if address:
        check_ray_address(address)
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                  "configure_logging": True}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
        started = True
    try:
        yield ray
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise
    finally:
        if started:
            ray.shutdown()


def task_resources(ray, device: str) -> dict[str, float]:
    """Resources of one model-running task or actor: a GPU when the cluster has GPUs and
    ``device`` allows one, else one CPU."""
    if device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1:
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": 1}


def worker_count(ray, resources: dict[str, float], limit: int | None = None) -> int:
    """How many such tasks or actors the cluster runs at once (at most ``limit``)."""
    total = ray.cluster_resources()
    n = int(total.get("GPU", 0) // resources["num_gpus"]) if resources.get("num_gpus") else \
        int(total.get("CPU", 1) // resources.get("num_cpus", 1))
    n = max(1, n)
    return min(n, limit) if limit else n
