"""Where the ray executor's tasks run: a Ray connection, and the storage check every node makes.

`ray_session` uses the Ray this process already has, connects to a cluster's address, or starts
a local instance for this machine whose servers listen on the loopback address only (no
dashboard), and closes what it opened. Ray is imported only here and only for `--executor ray`,
so the local executor works without it.

The cells' run directories must be on storage every node sees (a shared filesystem): the driver
writes a marker with a fresh token into the grid directory (`mark_grid_dir`) and every task
checks it (`check_grid_dir`) before touching anything, failing in one line that names the path
and the node instead of training into a directory nobody else will read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

from stagealign import artifacts
from stagealign.grid.spec import GridError

STORAGE_MARKER = ".grid-storage-check"  # in the grid directory, next to grid-cells.json
_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's node address is the loopback one


def import_ray():
    """Ray, imported only for this executor; one line naming the extra when it is missing."""
    try:
        import ray
    except ImportError:
        raise GridError("--executor ray needs Ray, which is not installed: pip install 'stagealign[ray]'") from None
    return ray


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """While a local instance starts, make Ray pick the loopback address for this node, so every
    server it starts listens on 127.0.0.1 only (the environment variable reaches its processes)."""
    try:
        from ray._private import ray_constants
    except ImportError:  # pragma: no cover - a Ray without this module
        ray_constants = None
    old_env = os.environ.get(_CLUSTER_ENV)
    old = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_CLUSTER_ENV] = "0"
    if old is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if old is not None:
            ray_constants.ENABLE_RAY_CLUSTER = old
        if old_env is None:
            os.environ.pop(_CLUSTER_ENV, None)
        else:
            os.environ[_CLUSTER_ENV] = old_env


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """The Ray this process already uses; else a connection to `address`; else a local instance
    for this machine (`num_cpus`, default all usable CPUs; loopback only, no dashboard).

    A connection or instance made here is closed at the end; one found running is left alone.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address:
        on_loopback = address.split("://")[-1].rsplit(":", 1)[0] in ("127.0.0.1", "localhost")
        with _loopback_only() if on_loopback else contextlib.nullcontext():  # a local instance started here
            ray.init(address=address, **quiet)
    else:
        with _loopback_only():
            ray.init(num_cpus=num_cpus or usable_cpus(), include_dashboard=False, _node_ip_address="127.0.0.1",
                     **quiet)
    try:
        yield ray
    finally:
        ray.shutdown()


def mark_grid_dir(out: Path) -> str:
    """Write the marker every task looks for; returns its token (new for every grid invocation)."""
    token = uuid.uuid4().hex
    artifacts.write_text(Path(out) / STORAGE_MARKER, token + "\n")
    return token


def node_label() -> str:
    """This machine for messages: host name and Ray node address."""
    try:
        import ray

        ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - only a label for messages
        ip = "?"
    return f"{socket.gethostname()} ({ip})"


def check_grid_dir(out: str | Path, token: str) -> None:
    """Fail in one line, naming the path and this node, when this node cannot see the grid
    directory the driver wrote (or sees another invocation's)."""
    path = Path(out) / STORAGE_MARKER
    try:
        seen = path.read_text(encoding="utf-8").strip()
    except OSError:
        seen = None
    if seen != token:
        what = "is missing" if seen is None else "belongs to another invocation"
        raise GridError(f"{out}: the grid directory is not visible from Ray node {node_label()} ({path} {what}); "
                        "put it on storage every node sees (a shared filesystem) and pass that path")
