"""`fer-ray pipeline` with a KDEF source: the best CNN is fine-tuned on KDEF and reported."""

from __future__ import annotations

import shutil

import pytest

from datagen import write_kdef
from fer_ray.artifacts import read_meta
from fer_ray.data.catalog import read_manifest
from fer_ray.pipeline import Pipeline, PipelineConfig, _val_acc

pytestmark = pytest.mark.ray


@pytest.mark.timeout(600)
def test_pipeline_transfers_the_best_cnn_to_kdef(tmp_path, ray_session):
    subjects = [("F", n) for n in (1, 4, 9, 12, 30)] + [("M", n) for n in (2, 5, 11, 20, 35)]
    write_kdef(tmp_path / "kdef", subjects=subjects, face_side=48)
    out = tmp_path / "out"
    cfg = PipelineConfig(storage=str(out), count=700, models=("small_cnn", "small_cnn"), epochs=2, batch_size=32,
                         svm_samples=1, svm_lambda=(0.01, 0.1), kdef=str(tmp_path / "kdef"), kdef_face_crop=False,
                         transfer_freeze=-2, transfer_epochs=2)
    summary = Pipeline(cfg, log=lambda *_: None).run()

    cnns = summary["outputs"]["cnns"]
    best = max(cnns, key=_val_acc)
    transfer = read_meta(summary["outputs"]["transfer"])
    assert transfer["transfer"]["init_from"] == best and transfer["transfer"]["freeze"] == -2
    assert transfer["catalog"]["sha256"] == read_manifest(str(out / "kdef-catalog"))["catalog_sha256"]
    assert 0 <= summary["transfer"]["accuracy"] <= 1 and summary["transfer"]["paper"] == 0.783
    assert "## Transfer learning to KDEF" in (out / "report.md").read_text()

    # Rerun: every finished stage is skipped. A CNN stage cut off after its val evaluation
    # (before test) is not finished: it runs again (resuming its Train run) and completes.
    shutil.rmtree(out / "cnn-1-small_cnn" / "eval-test")
    lines = []
    again = Pipeline(cfg, log=lines.append).run()
    assert "[pipeline] cnn-1-small_cnn ..." in lines and "[pipeline] ensemble ..." not in lines
    assert (out / "cnn-1-small_cnn" / "eval-test" / "metrics.json").exists()
    assert again["table"] == summary["table"]
    # Other settings on the same work directory would reuse stages made with the old ones.
    changed = PipelineConfig(**{**cfg.__dict__, "epochs": 3})
    with pytest.raises(ValueError, match="made with other epochs"):
        Pipeline(changed, log=lambda *_: None).run()
