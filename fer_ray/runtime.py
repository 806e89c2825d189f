"""Connecting to Ray: the one place fer-ray calls ``ray.init``.

Under ``ray job submit`` (or with RAY_ADDRESS set) this joins the cluster; otherwise it starts
a local Ray on this machine, which is what the demo and a laptop user want.
"""

from __future__ import annotations

import logging
import os


def init_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    """Start or join Ray once per process; later calls are no-ops."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # address="local": without it Ray 2.60 joins any cluster someone started with `ray start`
    # on this machine (and then refuses num_cpus), instead of the local Ray promised above.
    kwargs = {"address": address} if address else {"address": "local", "num_cpus": num_cpus}
    ray.init(include_dashboard=False, logging_level=logging.WARNING, **kwargs)
