"""The paper pipeline submitted with `ray job submit` to a real two-node local cluster.

cluster/local.sh starts a head and a worker node (separate raylets, token auth); the job
runs jobs/pipeline.py on a small synthetic catalog and must end SUCCEEDED with artifacts,
metrics and the report in its storage path. Everything goes through the same commands a
user types, so this is the CI check that the cluster path works end to end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"

pytestmark = [pytest.mark.ray, pytest.mark.multinode]


@pytest.fixture
def local_cluster():
    state = tempfile.mkdtemp(prefix="frl-", dir="/tmp")  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(FER_RAY_LOCAL_DIR=state, FER_RAY_GCS_PORT="6411", FER_RAY_DASHBOARD_PORT="8411", RAY=str(RAY))
    started = subprocess.run(["bash", "cluster/local.sh", "start"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    exports = subprocess.run(["bash", "cluster/local.sh", "env"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60, check=True).stdout
    env.update(dict(re.findall(r"^export (\w+)=(\S+)", exports, re.M)))
    assert env.get("RAY_ADDRESS", "").endswith(":6411"), exports
    try:
        yield env
    finally:
        subprocess.run(["bash", "cluster/local.sh", "stop"], cwd=ROOT, env=env, timeout=120, check=True)


def autoscaler_status(env, seconds=60) -> str:
    """`ray status` once it lists both nodes (or after ``seconds``): the autoscaler's view is
    refreshed every few seconds, so it can trail the state API that `local.sh start` waits on."""
    deadline = time.monotonic() + seconds
    while True:
        out = subprocess.run([str(RAY), "status"], env=env, capture_output=True, text=True, timeout=60).stdout
        if len(re.findall(r"^ \d+ node_", out, re.M)) == 2 or time.monotonic() > deadline:
            return out
        time.sleep(2)


@pytest.mark.timeout(1500)
def test_pipeline_job_succeeds_on_two_nodes(local_cluster, tmp_path):
    env = local_cluster
    status = autoscaler_status(env)
    assert len(re.findall(r"^ \d+ node_", status, re.M)) == 2, status

    storage = tmp_path / "storage"
    job = subprocess.run(
        [str(RAY), "job", "submit", "--runtime-env", "cluster/runtime_env.yaml", "--",
         "python", "jobs/pipeline.py", "--storage", str(storage), "--source", "synthetic", "--count", "700",
         "--models", "small_cnn", "small_cnn", "--epochs", "2", "--batch-size", "32", "--svm-samples", "2",
         "--workers", "2", "--cpus-per-worker", "0.5"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1300)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
    job_id = re.search(r"raysubmit_\w+", job.stdout + job.stderr).group(0)
    final = subprocess.run([str(RAY), "job", "status", job_id], env=env, capture_output=True, text=True, timeout=60)
    assert re.search(rf"Job '{job_id}' succeeded", final.stdout + final.stderr), final.stdout + final.stderr

    for artifact in ("svm/artifact", "cnn-1-small_cnn/artifact", "cnn-2-small_cnn/artifact", "ensemble/artifact"):
        assert (storage / artifact / "model.json").is_file(), artifact
        assert (storage / artifact / "model.safetensors").is_file(), artifact
    assert json.loads((storage / "cnn-1-small_cnn" / "result.json").read_text())["history"]
    assert (storage / "catalog" / "manifest.json").is_file()
    report = json.loads((storage / "report.json").read_text())
    models = [row["model"] for row in report["table"]]
    assert len(models) == 5
    # the report's figures are those the stages measured on the test split
    for row, stage in zip(report["table"], ("svm", "cnn-1-small_cnn", "cnn-2-small_cnn")):
        assert row["accuracy"] == json.loads((storage / stage / "eval-test" / "metrics.json").read_text())["accuracy"]
    assert "The paper's table" in (storage / "report.md").read_text()
