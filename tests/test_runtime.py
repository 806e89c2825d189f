"""The local Ray that fer-ray starts: its workers can find it (Ray Train's cleaner needs that)."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.ray


@pytest.mark.timeout(120)
def test_workers_reach_their_own_local_ray_through_the_state_api(ray_session):
    if os.environ.get("RAY_ADDRESS"):
        pytest.skip("the tests joined an existing cluster (RAY_ADDRESS is set)")
    ray = ray_session

    @ray.remote(num_cpus=0)
    def look_up() -> tuple[str, int]:
        from ray.util.state import list_nodes  # what Ray Train's placement-group cleaner uses

        return os.environ.get("RAY_ADDRESS", ""), len(list_nodes())

    address, nodes = ray.get(look_up.remote(), timeout=60)
    assert address == ray.get_runtime_context().gcs_address and nodes == 1
    assert "RAY_ADDRESS" not in os.environ  # the driver's own environment is left as it was
