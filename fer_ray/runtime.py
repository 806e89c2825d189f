"""Connecting to Ray: the one place fer-ray calls ``ray.init``.

Under ``ray job submit`` (or with RAY_ADDRESS set) this joins the cluster; otherwise it starts
a local Ray on this machine, which is what the demo and a laptop user want.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager


class Interrupted(RuntimeError):
    """Work stopped part-way that a rerun of the same command resumes (the message says so).

    Here, in a module the command line imports anyway, so that ``fer-ray`` can answer any
    stage's interruption with exit status 130 without importing Ray Tune to recognise it.
    """


def init_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    """Start or join Ray once per process; later calls are no-ops."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except ConnectionError as exc:  # e.g. RAY_ADDRESS=auto with no cluster on this machine
            raise ClusterUnreachable(f"RAY_ADDRESS={address}: {str(exc).strip().splitlines()[0]}") from None
        return
    # address="local": without it Ray 2.60 joins any cluster someone started with `ray start`
    # on this machine (and then refuses num_cpus), instead of the local Ray promised above.
    # Ray Train's placement-group cleaner looks the cluster up from inside a worker through the
    # State API: with RAY_ADDRESS pointing at our GCS (whose port we choose) and the dashboard
    # running, it finds this Ray instead of failing with a traceback in every training run, or
    # finding another Ray on the same machine.
    port = _free_port()
    with environ(RAY_GCS_SERVER_PORT=str(port), RAY_ADDRESS=f"{ray.util.get_node_ip_address()}:{port}"):
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, logging_level=logging.WARNING)


class ClusterUnreachable(ValueError):
    """RAY_ADDRESS names a cluster that is not there: one line for the user, not a traceback."""


def _check_reachable(address: str) -> None:
    """A GCS address (``host:port``) that nobody answers at would have ``ray.init`` retry for
    minutes, logging the same line again and again: try the port once, for a few seconds."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", ray:// and http:// addresses: ray.init reports those itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ClusterUnreachable(f"no Ray cluster answers at RAY_ADDRESS={address} ({exc}); start one "
                                 "(`ray start --head`, cluster/local.sh) or unset RAY_ADDRESS for a local Ray") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@contextmanager
def environ(**values: str):
    """Set environment variables for the ``with`` block, then restore this process's own
    environment (e.g. while the local Ray starts, so that its processes and every worker they
    spawn inherit them)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cluster_capacity() -> dict[str, float]:
    """Resources the cluster has now or, under an autoscaler (KubeRay, the cluster launcher),
    can scale up to, whichever is more.

    Sizing from the live nodes alone would refuse ``--gpu`` while a GPU worker group is scaled
    to zero, and run a sweep one trial at a time on a head that takes no work. Ray has no public
    call for this yet; Ray Train checks its worker groups against the same figure.
    """
    import ray
    from ray._private.state import state

    now = dict(ray.cluster_resources())
    most = state.get_max_resources_from_cluster_config() or {}
    return {key: max(now.get(key, 0), most.get(key, 0)) for key in set(now) | set(most)}


def require_gpus(count: float) -> None:
    """Refuse ``--gpu`` up front when the cluster cannot ever hold ``count`` GPUs: a Train
    worker, Serve replica or actor asking for a GPU that never comes waits for ever."""
    have = cluster_capacity().get("GPU", 0)
    if have < count:
        raise ValueError(f"--gpu needs {count:g} GPU(s) but the Ray cluster has {have:g} "
                         "(and cannot scale up to more)")


def require_cpus(count: float, what: str) -> None:
    """Refuse work whose CPU request the cluster can never meet (``what`` says whose): Ray
    Train's worker group would wait for it for ever, retrying its start every minute."""
    have = cluster_capacity().get("CPU", 0)
    if have < count:
        raise ValueError(f"{what} need {count:g} CPUs but the Ray cluster has {have:g} (and cannot scale up to more)")
