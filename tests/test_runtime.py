"""The local Ray that fer-ray starts (its workers can find it: Ray Train's cleaner needs that),
and a RAY_ADDRESS that names no cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time

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


@pytest.mark.timeout(120)
def test_a_ray_address_nobody_answers_at_is_one_error_line_not_minutes_of_retries(tmp_path):
    """ray.init retried an unanswered GCS address for minutes (until killed), logging all along."""
    from fer_ray.runtime import _free_port

    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{_free_port()}"}
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "fer_ray.cli", "prepare", "--source", "synthetic", "--count", "70",
                           "--output", str(tmp_path / "cat")], env=env, capture_output=True, text=True, timeout=100)
    assert done.returncode == 2 and time.time() - t0 < 60
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"fer-ray prepare: error: no Ray cluster answers at RAY_ADDRESS={env['RAY_ADDRESS']}")
    assert not (tmp_path / "cat").exists()
