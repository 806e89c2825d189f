"""The paper pipeline and a scoring job submitted with `ray job submit` to a real two-node
local cluster.

cluster/local.sh starts a head and a worker node (separate raylets, token auth); one job
runs jobs/pipeline.py on a small synthetic catalog and must end SUCCEEDED with artifacts,
metrics and the report in its storage path, another scores a folder of photos and a video. Everything goes through the same commands a
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


@pytest.fixture(scope="module")  # one cluster for the module's jobs: starting one takes a minute
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


@pytest.mark.timeout(900)
def test_score_job_scores_videos_and_photos_on_two_nodes(local_cluster, tmp_path):
    """jobs/score.py over a folder with a video (cut into segments) and photos: the actors on
    both nodes write their parts, the driver assembles the output and each video's tracks."""
    import pandas as pd

    from datagen import encode
    from photos import SYNTHETIC, detectable_faces, photo
    from videos import scheduled_video

    env = local_cluster
    media = tmp_path / "media"
    media.mkdir()
    faces, spots = list(detectable_faces(2)), [(40, 60), (400, 220)]
    scheduled_video(media / "talk.mp4", [(0.0, photo(faces, spots))], 3.0, fps=10)
    for i in range(3):
        (media / f"still{i}.png").write_bytes(encode(photo(faces[:1], spots[:1], seed=i), "PNG"))
    out = tmp_path / "scores.parquet"
    job = subprocess.run(
        [str(RAY), "job", "submit", "--runtime-env", "cluster/runtime_env.yaml", "--",
         "python", "jobs/score.py", "--input", str(media), "--output", str(out), "--detector", SYNTHETIC,
         "--fps", "2", "--segment-seconds", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=800)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
    assert "score: 3 files and 1 videos (6 frames), 15 faces" in job.stdout, job.stdout[-4000:]
    df = pd.read_parquet(out)
    talk = df[df["path"] == str(media / "talk.mp4")]
    assert sorted(talk["time"].unique()) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5] and talk["error"].isna().all()
    assert sorted(talk.groupby("track").size()) == [6, 6]  # each face one track across the three segments
    assert len(list(Path(f"{out}.parts").glob("part-*.parquet"))) == 1 + 3
    assert pd.read_parquet(tmp_path / "scores.tracks.parquet")["frames"].tolist() == [6, 6]
