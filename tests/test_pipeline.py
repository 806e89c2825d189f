"""`fer-ray pipeline`: every stage end to end (with KDEF transfer and scoring), its resume, and
the settings it checks before the first stage."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from datagen import write_kdef
from fer_ray.artifacts import read_meta
from fer_ray.data.catalog import Catalog
from fer_ray.demo import write_demo_photos
from fer_ray.pipeline import Pipeline, PipelineConfig


@pytest.mark.timeout(600)
def test_pipeline_runs_every_stage_and_resumes(tmp_path, ray_session, caplog):
    """The one end-to-end run of the paper's stages (the demo's, plus KDEF transfer), then a rerun."""
    subjects = [("F", n) for n in (1, 4, 9, 12, 30)] + [("M", n) for n in (2, 5, 11, 20, 35)]
    write_kdef(tmp_path / "kdef", subjects=subjects, face_side=48)
    assert write_demo_photos(tmp_path / "photos", count=9) == 10
    out = tmp_path / "out"
    cfg = PipelineConfig(storage=str(out), count=700, models=("small_cnn", "small_cnn"), epochs=2, batch_size=32,
                         svm_samples=1, svm_lambda=(0.01, 0.1), kdef=str(tmp_path / "kdef"), kdef_face_crop=False,
                         transfer_freeze=-2, transfer_epochs=2, score_input=str(tmp_path / "photos"),
                         score_detector="haar")  # the demo's drawn faces, as the demo scores them
    summary = Pipeline(cfg).run()
    assert set(summary["outputs"]) == {"catalog", "svm", "cnns", "ensemble", "report", "transfer", "scores"}
    accuracy = {row["model"].split(" (")[0]: row["accuracy"] for row in summary["table"]}
    assert len(accuracy) == 5  # SVM, two CNNs, soft vote, stacked
    # 70 test faces, chance 1/7: two-epoch CNNs are near it, but the SVM and the stacked head
    # (a logistic regression per emotion on both CNNs' features) learn the synthetic faces
    assert accuracy["linear SVM"] > 0.2 and accuracy["stacked ensemble"] > 0.25, accuracy
    scores = pd.read_parquet(summary["outputs"]["scores"])
    assert scores["path"].nunique() == 10  # 9 photos + the broken file: nothing dropped
    assert scores["error"].str.startswith("not a decodable image").sum() == 1
    assert (scores["error"] == "no face detected").sum() == 1

    cnns = summary["outputs"]["cnns"]
    best = max(cnns, key=lambda c: read_meta(c)["metrics"]["val"]["accuracy"])
    transfer = read_meta(summary["outputs"]["transfer"])
    assert transfer["transfer"]["init_from"] == best and transfer["transfer"]["freeze"] == -2
    assert transfer["catalog"]["sha256"] == Catalog.open(out / "kdef-catalog").sha256
    assert summary["transfer"]["paper"] == 0.783
    assert "## Transfer learning to KDEF" in (out / "report.md").read_text()

    # Rerun: every finished stage is skipped. A CNN stage cut off before it wrote its result
    # (after training) is not finished: it runs again (resuming its Train run) and completes.
    (out / "cnn-1-small_cnn" / "result.json").unlink()
    caplog.set_level(logging.INFO, logger="fer_ray")
    caplog.clear()
    again = Pipeline(cfg).run()
    lines = caplog.messages
    assert "[pipeline] cnn-1-small_cnn ..." in lines and "[pipeline] ensemble ..." not in lines
    assert (out / "cnn-1-small_cnn" / "result.json").exists()
    assert again["table"] == summary["table"]
    # Other settings on the same work directory would reuse stages made with the old ones.
    changed = PipelineConfig(**{**cfg.__dict__, "epochs": 3})
    with pytest.raises(ValueError, match="holds a pipeline run with different epochs"):
        Pipeline(changed).run()


@pytest.mark.parametrize("changes,message", [
    ({"lr": 0.0}, "lr\n  Input should be greater than 0"),  # failed after the catalog and the SVM sweep
    ({"storage": "s3://bucket/run"}, "a URI --storage needs --work-dir"),  # a temp dir each time: never resumed
    ({"work_dir": "elsewhere"}, "--work-dir is for a URI --storage"),  # was silently ignored
    ({"kdef": "KDEF", "transfer_freeze": 50}, "--freeze 50 is out of range"),  # failed after every CNN
])
def test_settings_of_late_stages_are_checked_before_the_first(tmp_path, changes, message):
    (tmp_path / "KDEF").mkdir()
    if "kdef" in changes:
        changes = {**changes, "kdef": str(tmp_path / "KDEF")}
    with pytest.raises(ValueError, match=message):
        PipelineConfig(**{"storage": str(tmp_path / "out"), "models": ("small_cnn", "small_cnn"), **changes})


def _finished_run(tmp_path, catalog: Path, **settings) -> PipelineConfig:
    """A work directory whose catalog stage is done: a real catalog (the shared synthetic one)
    copied where the pipeline builds its own."""
    cfg = PipelineConfig(storage=str(tmp_path / "out"), models=("small_cnn", "small_cnn"), **settings)
    Pipeline(cfg).check_settings()
    shutil.copytree(catalog, tmp_path / "out" / "catalog")
    return cfg


def test_adding_kdef_on_a_rerun_may_bring_its_own_transfer_settings(tmp_path, synthetic_catalog):
    cfg = _finished_run(tmp_path, synthetic_catalog)
    (tmp_path / "KDEF").mkdir()
    with_kdef = PipelineConfig(**{**cfg.__dict__, "kdef": str(tmp_path / "KDEF"), "kdef_face_crop": False,
                                  "transfer_freeze": -1, "transfer_epochs": 3})
    Pipeline(with_kdef).check_settings()  # no transfer stage ran: nothing to mix
    other = PipelineConfig(**{**with_kdef.__dict__, "transfer_epochs": 4})
    with pytest.raises(ValueError, match="holds a pipeline run with different transfer_epochs"):  # now one exists
        Pipeline(other).check_settings()


def test_a_resumed_run_reports_each_stage_s_time_when_it_ran(tmp_path, synthetic_catalog):
    cfg = _finished_run(tmp_path, synthetic_catalog)
    done = tmp_path / "out" / "stage-a" / "done"
    first = Pipeline(cfg)
    first.stage("stage-a", lambda: (time.sleep(0.3), done.parent.mkdir(), done.touch()), done=done)
    assert first.timings["stage-a"] >= 0.3
    again = Pipeline(cfg)
    again.stage("stage-a", lambda: pytest.fail("a finished stage ran again"), done=done)
    assert again.timings == first.timings  # was 0.0: the time it took to skip it


@pytest.mark.timeout(300)
def test_another_score_input_on_a_rerun_is_scored_not_reused(tmp_path, synthetic_catalog, small_artifact, caplog):
    """The scores stage, with the real scoring on the local Ray: the same --score-input again is
    skipped, another one is scored afresh (its rows replace the first input's)."""
    for name, seed in (("a", 1), ("b", 2)):
        write_demo_photos(tmp_path / name, count=2, seed=seed)
    cfg = _finished_run(tmp_path, synthetic_catalog, score_input=str(tmp_path / "a"))
    caplog.set_level(logging.INFO, logger="fer_ray")
    out = Pipeline(cfg).score(str(small_artifact))
    first = pd.read_parquet(out)
    Pipeline(cfg).score(str(small_artifact))  # the same input: done, skipped
    assert any(line.startswith("[pipeline] scores: already done") for line in caplog.messages)
    assert pd.read_parquet(out).equals(first)
    other = PipelineConfig(**{**cfg.__dict__, "score_input": str(tmp_path / "b")})
    Pipeline(other).score(str(small_artifact))
    paths = set(pd.read_parquet(out)["path"])
    assert paths and all(path.startswith(str(tmp_path / "b")) for path in paths)
    assert set(first["path"]) and all(path.startswith(str(tmp_path / "a")) for path in first["path"])
