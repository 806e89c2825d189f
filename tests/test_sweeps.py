"""Ray Tune sweeps: the best trial is chosen, an interrupted sweep resumes without repeating trials."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fer_ray.inference.predictor import Predictor
from fer_ray.tuning.sweeps import CnnSweep, SvmSweep, choose_best, results_table, sweep_cnn, sweep_svm



def test_choose_best_takes_the_highest_val_accuracy_among_completed_trials():
    rows = [{"trial_id": "a", "status": "complete", "val_acc": 0.5, "config": {}},
            {"trial_id": "b", "status": "stopped", "val_acc": 0.9, "config": {}},  # no artifact to keep
            {"trial_id": "c", "status": "complete", "val_acc": 0.7, "config": {}},
            {"trial_id": "d", "status": "complete", "val_acc": 0.7, "config": {}},
            {"trial_id": "e", "status": "error", "val_acc": None, "config": {}, "error": "boom"}]
    assert choose_best(rows)["trial_id"] == "c"
    with pytest.raises(RuntimeError, match="boom"):
        choose_best([rows[-1]])


def test_a_trial_is_finished_by_its_final_report_even_if_a_stop_came_before_it_returned(tmp_path):
    """Ctrl+C between a trial's final report and its return left it without Tune's ``done``,
    and Tune does not run such a trial again: counted unfinished, every rerun of the sweep
    said it was unfinished. Its final report (made after the artifact) is what counts."""
    from types import SimpleNamespace

    from fer_ray.tuning.sweeps import _row

    (tmp_path / "artifact").mkdir()
    (tmp_path / "artifact" / "model.json").write_text("{}")

    def row(**metrics):
        return _row(SimpleNamespace(metrics={"trial_id": "t", "val_acc": 0.5, **metrics}, error=None,
                                    config={}, path=str(tmp_path)))["status"]

    artifact = str(tmp_path / "artifact")
    assert row(artifact=artifact, final=True) == "complete"  # reported, stopped before returning
    assert row(artifact=artifact, final=True, done=True) == "complete"
    assert row(artifact=artifact) == "unfinished"  # the artifact alone: the final report never came
    assert row(epoch=3) == "unfinished"  # an epoch's report of a run cut short
    assert row(epoch=3, done=True) == "stopped"  # returned early without an artifact (ASHA)


@pytest.mark.parametrize("bad,message", [
    ({"label_smoothing": (0.2,)}, "label_smoothing.1\n  Field required"),
    ({"label_smoothing": (0.0, 0.1, 0.2)}, "label_smoothing\n  Tuple should have at most 2 items"),
    ({"label_smoothing": (0.3, 0.1)}, "--label-smoothing takes a range MIN MAX"),
    ({"batch_sizes": (0, 64)}, "--batch-sizes must all be at least 1"),
    ({"cpus_per_worker": 0}, "cpus_per_worker\n  Input should be greater than 0"),
    ({"grace_period": 0}, "grace_period\n  Input should be greater than or equal to 1"),
    # an infinite bound reached Tune, whose error said "requires a upper bound greater than 0. Got: 0.005"
    ({"lr_max": float("inf")}, "need 0 < --lr-min < --lr-max < inf"),
    ({"wd_min": float("nan")}, "0 < --wd-min < --wd-max < inf"),
])
def test_cnn_sweep_settings_are_checked_before_ray_starts(bad, message):
    with pytest.raises(ValueError, match=message):
        CnnSweep(catalog="c", run_dir="r", **bad)


@pytest.mark.parametrize("bounds", [(0.3, float("inf")), (float("nan"), 3.0), (3.0, 0.3), (0.0, 1.0)])
def test_svm_sweep_lambda_range_is_checked_before_ray_starts(bounds):
    with pytest.raises(ValueError, match="need 0 < --lambda-min < --lambda-max < inf"):
        SvmSweep(catalog="c", run_dir="r", lambda_min=bounds[0], lambda_max=bounds[1])


def test_cluster_capacity_counts_what_an_autoscaler_can_add(ray_session, monkeypatch):
    """A KubeRay GPU group scaled to zero still counts: `--gpu` and sweep sizes go by it."""
    from ray._private.state import state

    from fer_ray.runtime import cluster_capacity

    assert cluster_capacity()["CPU"] >= 1 and cluster_capacity().get("GPU", 0) == 0
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: {"CPU": 64, "GPU": 4})
    assert cluster_capacity()["GPU"] == 4 and cluster_capacity()["CPU"] == 64


def test_svm_sweep_keeps_the_trial_with_the_best_val_accuracy(synthetic_catalog, ray_session, tmp_path, capfd, caplog):
    run = tmp_path / "sweep"
    cfg = SvmSweep(catalog=str(synthetic_catalog), run_dir=str(run), samples=3, lambda_min=0.3, lambda_max=3.0)
    summary = sweep_svm(cfg)
    printed = capfd.readouterr().out
    assert "Configuration for experiment" not in printed and "tensorboard" not in printed  # Tune's tables are off
    rows = results_table(str(run))
    assert len(rows) == 3 and {r["status"] for r in rows} == {"complete"}
    assert len({r["lambda"] for r in rows}) == 3
    assert all(0.3 <= r["lambda"] <= 3.0 for r in rows)
    best = max(rows, key=lambda r: r["val_acc"])
    assert summary["best"]["val_acc"] == best["val_acc"]
    assert summary["best"]["config"]["lambda"] == pytest.approx(best["lambda"])
    # The kept artifact is the best trial's, and it scores that val accuracy again.
    meta = Predictor(run / "artifact").meta
    assert meta["fit"]["lambda"] == pytest.approx(best["lambda"])
    assert meta["metrics"]["val"]["accuracy"] == pytest.approx(best["val_acc"])
    assert (run / "eval-test" / "report.md").is_file()
    # The same command again: finished, so nothing runs and nothing is rewritten.
    stamp = (run / "result.json").stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="fer_ray")
    caplog.clear()
    assert sweep_svm(cfg) == json.loads((run / "result.json").read_text())
    assert caplog.messages == [f"sweep svm: already finished ({run / 'result.json'}; --overwrite to run it again)"]
    assert (run / "result.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="different samples"):
        sweep_svm(SvmSweep(catalog=str(synthetic_catalog), run_dir=str(run), samples=4, lambda_min=0.3,
                           lambda_max=3.0))


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_interrupted_sweep_resumes_without_repeating_finished_trials(synthetic_catalog, ray_session, tmp_path):
    """Ctrl+C a sweep after its first trials, rerun the same command: only the rest run."""
    run = tmp_path / "sweep"
    args = ["sweep", "svm", "--catalog", str(synthetic_catalog), "--run-dir", str(run), "--samples", "6",
            "--lambda-min", "0.3", "--lambda-max", "3", "--concurrency", "1"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "fer_ray.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    # One trial at a time: once the second trial has its artifact, the first one has finished.
    while len(list(run.glob("trials/*/artifact/model.json"))) < 2:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no trial finished in time"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "rerun the same command to resume" in out

    before = {r["trial_id"]: r for r in results_table(str(run))}
    finished = {t: r for t, r in before.items() if r["status"] == "complete"}
    assert 1 <= len(finished) < 6, f"the interruption came too late to test resuming: {before}"
    # Tune marks interrupted trials terminated: counted from them, the message said more had
    # finished (and once every trial had started, a CNN sweep went on to pick a "best", exit 0).
    assert f"stopped with {len(finished)} of 6 trials finished" in out
    stamps = {t: Path(r["artifact"], "model.json").stat().st_mtime_ns for t, r in finished.items()}

    from fer_ray.cli import main

    assert main(args) == 0  # same command, same run dir: resumes in this process's Ray
    after = {r["trial_id"]: r for r in results_table(str(run))}
    assert len(after) == 6 and {r["status"] for r in after.values()} == {"complete"}
    assert set(before) <= set(after)
    for t, r in finished.items():  # finished trials were kept, not run again
        assert after[t]["lambda"] == r["lambda"] and after[t]["val_acc"] == r["val_acc"]
        assert Path(r["artifact"], "model.json").stat().st_mtime_ns == stamps[t]


@pytest.mark.ray
@pytest.mark.timeout(720)  # ~80 s alone on 2 CPUs; much longer beside other Ray work
def test_cnn_sweep_reports_every_epoch_and_keeps_the_best_completed_trial(synthetic_catalog, ray_session, tmp_path):
    run = tmp_path / "cnn-sweep"
    cfg = CnnSweep(catalog=str(synthetic_catalog), run_dir=str(run), samples=2, epochs=2,
                   recipe={"batch_size": 64}, grace_period=1, reduction_factor=2)
    summary = sweep_cnn(cfg)
    rows = results_table(str(run))
    assert len(rows) == 2 and {r["status"] for r in rows} <= {"complete", "stopped"}
    complete = [r for r in rows if r["status"] == "complete"]
    assert complete and all(r["epochs"] == 2 for r in complete)
    assert summary["best"]["val_acc"] == max(r["val_acc"] for r in complete)
    assert Predictor(run / "artifact").meta["recipe"]["lr"] == pytest.approx(summary["best"]["config"]["lr"])
    # Every trial's Train run reported per epoch to Tune (ASHA's input), not only at the end.
    for r in rows:
        progress = next(Path(run, "tune", "cnn").glob(f"*{r['trial_id']}*/progress.csv")).read_text()
        assert "epoch" in progress.splitlines()[0] and len(progress.splitlines()) >= 2


def test_a_catalog_without_val_is_refused_before_any_trial(synthetic_catalog, tmp_path):
    """Every CNN trial failed on its own (after Ray and Tune started); the SVM sweep read train first."""
    import shutil

    catalog = tmp_path / "no-val"
    shutil.copytree(synthetic_catalog, catalog)
    manifest = json.loads((catalog / "manifest.json").read_text())
    del manifest["shards"]["val"]
    (catalog / "manifest.json").write_text(json.dumps(manifest))
    for sweep in (lambda: sweep_svm(SvmSweep(catalog=str(catalog), run_dir=str(tmp_path / "s"))),
                  lambda: sweep_cnn(CnnSweep(catalog=str(catalog), run_dir=str(tmp_path / "c")))):
        with pytest.raises(ValueError, match="has no 'val' split"):
            sweep()
    assert not (tmp_path / "s").exists() and not (tmp_path / "c").exists()


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_a_train_worker_bigger_than_the_cluster_is_refused_not_waited_for(synthetic_catalog, ray_session, tmp_path):
    with pytest.raises(ValueError, match="--cpus-per-worker 4: a trial.s Train worker would need 4 CPUs but "
                                         "the Ray cluster has 2"):
        sweep_cnn(CnnSweep(catalog=str(synthetic_catalog), run_dir=str(tmp_path / "c"), cpus_per_worker=4))
