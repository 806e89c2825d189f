"""Training through Ray Train: learning on 1 and 2 CPU workers, recovery, resume, transfer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from fer_ray.artifacts import load_artifact, read_meta
from fer_ray.cli import main, one_line
from fer_ray.models import build_model
from fer_ray.models.inputs import Normalization
from fer_ray.training.config import Recipe, TrainConfig
from fer_ray.training.loop import Run, TrainingDiverged, to_device
from fer_ray.training.trainer import train
from fer_ray.training.transfer import freeze_stages, resolve_freeze

FAST = dict(batch_size=32, lr=0.05)


def _history_epochs(summary):
    return [row["epoch"] for row in summary["history"]]


@pytest.mark.timeout(300)
def test_cli_train_one_worker_learns_and_evaluates(synthetic_catalog, tmp_path, ray_session, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--catalog", str(synthetic_catalog), "--model", "small_cnn", "--epochs", "6",
                 "--batch-size", "32", "--workers", "1", "--run-dir", str(run_dir)]) == 0
    meta = read_meta(run_dir / "artifact")
    assert meta["architecture"] == "small_cnn" and meta["epochs_trained"] == 6
    assert meta["metrics"]["val"]["accuracy"] > 0.6  # chance is 1/7
    assert meta["catalog"]["sha256"] == json.loads((synthetic_catalog / "manifest.json").read_text())["catalog_sha256"]
    history = json.loads((run_dir / "result.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 7))
    assert history[-1]["val_acc"] > history[0]["val_acc"]
    report = (run_dir / "eval-test" / "report.md").read_text()
    assert "split 'test'" in report and "macro" in report

    out = tmp_path / "eval"
    assert main(["evaluate", "--artifact", str(run_dir / "artifact"), "--catalog", str(synthetic_catalog),
                 "--split", "val", "--output", str(out), "--tta", "flip", "--device", "cpu"]) == 0
    assert json.loads((out / "metrics.json").read_text())["accuracy"] > 0.6
    assert "val+tta-flip" in read_meta(run_dir / "artifact")["metrics"]

    # Neither an earlier report nor a trained run is written over without --overwrite.
    again = ["evaluate", "--artifact", str(run_dir / "artifact"), "--catalog", str(synthetic_catalog),
             "--split", "test", "--output", str(out), "--device", "cpu"]
    capsys.readouterr()
    assert main(again) == 2 and "--overwrite" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["protocol"].startswith("split 'val'")
    assert main([*again, "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["protocol"].startswith("split 'test'")
    assert main(["baseline", "--catalog", str(synthetic_catalog), "--run-dir", str(run_dir)]) == 2
    assert "holds a train run" in capsys.readouterr().err
    assert read_meta(run_dir / "artifact")["kind"] == "cnn"


@pytest.mark.timeout(300)
def test_two_cpu_workers_learn_and_recover_from_a_worker_failure(synthetic_catalog, tmp_path, ray_session):
    # batch_size is per worker: 2 x 16 keeps the one-worker tests' global batch and step count
    cfg = TrainConfig(catalog=str(synthetic_catalog), run_dir=str(tmp_path / "run"), workers=2,
                      cpus_per_worker=0.5, recipe=Recipe(epochs=6, batch_size=16, lr=0.05), fault_epoch=2,
                      max_failures=1)
    summary = train(cfg)
    assert (tmp_path / "run" / ".fault-injected").exists()  # the failure really happened
    assert _history_epochs(summary) == [1, 2, 3, 4, 5, 6]  # each epoch counted once
    assert summary["evaluations"]["val"]["accuracy"] > 0.5
    assert read_meta(summary["artifact"])["workers"] == 2


@pytest.mark.timeout(400)
def test_rerun_resumes_instead_of_restarting(synthetic_catalog, tmp_path, ray_session, capfd):
    cfg = TrainConfig(catalog=str(synthetic_catalog), run_dir=str(tmp_path / "run"), recipe=Recipe(epochs=3, **FAST),
                      fault_epoch=2, max_failures=0)
    with pytest.raises(Exception, match="injected failure"):
        train(cfg)  # "killed" during epoch 3, after checkpointing epoch 2
    first_two = [row for row in _checkpointed_history(tmp_path / "run")]
    assert [row["epoch"] for row in first_two] == [1, 2]
    capfd.readouterr()
    summary = train(cfg)  # the same command again
    assert _history_epochs(summary) == [1, 2, 3]
    assert "[train] resuming from epoch 3 of 3" in capfd.readouterr().out  # Ray forwards the worker's line
    assert summary["history"][:2] == first_two  # epochs 1-2 were not recomputed

    changed = TrainConfig(**{**cfg.__dict__, "recipe": Recipe(epochs=5, **FAST)})
    with pytest.raises(ValueError, match="different recipe"):
        train(changed)


def test_a_rerun_with_another_recipe_is_refused_before_ray_starts(tmp_path, monkeypatch):
    """It was refused only after Ray's start (~40 s here). The catalog is a manifest alone:
    nothing may read its shards before the refusal."""

    import fer_ray.runtime
    from fer_ray.data.catalog import FORMAT, MANIFEST
    from fer_ray.rundir import open_run
    from fer_ray.training.config import TRAJECTORY

    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / MANIFEST).write_text(json.dumps({"format": FORMAT, "shards": {"train": 1, "val": 1}, "image_size": 48,
                                                "pixel_mean": 0.5, "pixel_std": 0.25, "catalog_sha256": "0" * 64}))
    first = TrainConfig(catalog=str(catalog), run_dir=str(tmp_path / "run"), recipe=Recipe(epochs=3, **FAST))
    stored = first.model_dump()
    settings = {k: stored[k] for k in (*TRAJECTORY, "name")} | {"catalog_sha256": "0" * 64}
    with open_run(first.run_dir, "train", settings) as run:
        run.claim()
    monkeypatch.setattr(fer_ray.runtime, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    changed = TrainConfig(**{**first.__dict__, "recipe": Recipe(epochs=5, **FAST)})
    with pytest.raises(ValueError, match="holds a train run with different recipe;"):
        train(changed)


def _checkpointed_history(run_dir):
    checkpoints = sorted(p for p in (run_dir / "ray" / "train").glob("checkpoint_*") if p.is_dir())
    state = torch.load(checkpoints[-1] / "state.pt", weights_only=True)
    return state["history"]


@pytest.mark.timeout(300)
def test_transfer_learning_freezes_early_stages(small_artifact, synthetic_catalog, tmp_path, ray_session,
                                                monkeypatch):
    monkeypatch.chdir(small_artifact.parent)  # a relative --init-from, as a user types it: each
    # Ray Train worker runs in a directory of its own, so the path must be made absolute first
    summary = train(TrainConfig(catalog=str(synthetic_catalog), run_dir=str(tmp_path / "run"),
                                init_from=small_artifact.name, freeze=-1, recipe=Recipe(epochs=2, **FAST)))
    meta, new = load_artifact(summary["artifact"])
    _, old = load_artifact(small_artifact)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == meta["architecture"] == "small_cnn"  # recorded: what was trained
    assert meta["transfer"]["frozen_stages"] == ["block1", "block2", "block3", "block4", "head"]
    assert meta["parameters"]["trainable"] == 128 * 7 + 7
    assert meta["parameters"]["frozen"] == meta["parameters"]["total"] - meta["parameters"]["trainable"]
    for name, value in new.items():
        if name.startswith("backbone."):
            assert torch.equal(value, old[name]), f"frozen {name} changed"
    assert not torch.equal(new["classifier.weight"], old["classifier.weight"])


def test_bad_starting_points_are_refused_on_the_driver(small_artifact, synthetic_catalog, tmp_path):
    """Caught before any Ray Train worker starts (where they would fail, be retried by
    FailureConfig, and end in a WorkerGroupError with the reason buried in worker logs)."""
    def config(**kw):
        return TrainConfig(catalog=str(synthetic_catalog), run_dir=str(tmp_path / "run"), **kw)

    with pytest.raises(ValueError, match="--freeze 6 is out of range"):
        train(config(init_from=str(small_artifact), freeze=6))
    with pytest.raises(ValueError, match="--model vgg16 conflicts with --init-from .*small_cnn"):
        train(config(init_from=str(small_artifact), model="vgg16"))
    with pytest.raises(ValueError, match="is a folder \\(an artifact: fine-tune it with --init-from\\)"):
        train(config(weights=str(small_artifact)))
    with pytest.raises(ValueError, match="--freeze needs --init-from"):
        config(freeze=-2)
    with pytest.raises(ValueError, match="checkpoint_every\n  Input should be greater than or equal to 1"):
        config(checkpoint_every=0)
    torch.save(build_model("small_cnn", num_classes=5).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="weights .*other.pt do not fit small_cnn"):
        train(config(weights=str(tmp_path / "other.pt")))
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        train(config(weights="nowhere.safetensors"))
    with pytest.raises(ValueError, match="--weights and --init-from both give starting weights"):
        config(init_from=str(small_artifact), weights=str(tmp_path / "other.pt"))  # the file was ignored
    edited = tmp_path / "edited"
    shutil.copytree(small_artifact, edited)
    meta = json.loads((edited / "model.json").read_text())
    (edited / "model.json").write_text(json.dumps({**meta, "architecture": "vgg16"}))
    with pytest.raises(ValueError, match="weights do not fit the vgg16 described in model.json"):  # was a traceback
        train(config(init_from=str(edited)))
    relabelled = tmp_path / "relabelled"
    shutil.copytree(small_artifact, relabelled)
    (relabelled / "model.json").write_text(json.dumps({**meta, "labels": ["pos", "neg", "a", "b", "c", "d", "e"]}))
    with pytest.raises(ValueError, match="relabelled/model.json: labels: must be the seven emotions in order"):
        train(config(model="small_cnn", teacher=(str(relabelled),)))
    assert not (tmp_path / "run" / "ray").exists()  # no Ray Train run was started
    assert config(weights="w.pt").weights == str(Path.cwd() / "w.pt")


def test_freeze_rules():
    model = build_model("small_cnn")
    assert resolve_freeze(model, 2) == 2 and resolve_freeze(model, -1) == len(model.stage_names()) - 1
    for bad in (len(model.stage_names()), -len(model.stage_names()), -len(model.stage_names()) - 1):
        with pytest.raises(ValueError, match="out of range"):
            resolve_freeze(model, bad)
    frozen = freeze_stages(model, 2)
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())


def test_run_state_resumes_exactly():
    """Two epochs straight == one epoch, checkpoint, restore into a new Run, one more epoch."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (96, 48, 48), dtype=np.uint8)
    labels = rng.integers(0, 7, 96)
    data = to_device(images, labels, torch.device("cpu"))
    recipe = Recipe(epochs=2, batch_size=32, lr=0.05)
    norm = Normalization(0.5, 0.25)

    def fresh():
        torch.manual_seed(0)
        return Run(build_model("small_cnn"), recipe, 48, norm, data, data)

    straight = fresh()
    straight.epoch()
    straight.epoch()
    first = fresh()
    first.epoch()
    state = {k: (v.copy() if isinstance(v, list) else v) for k, v in first.state_dict().items()}
    state = torch.load(_roundtrip(state), weights_only=True)
    resumed = fresh()
    resumed.load_state_dict(state)
    resumed.epoch()
    assert resumed.done and [r["epoch"] for r in resumed.history] == [1, 2]
    for k, v in straight.model.state_dict().items():
        assert torch.allclose(v.float(), resumed.model.state_dict()[k].float(), atol=1e-6), k


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_recipe_validation():
    """Refused when the recipe is built, before any worker starts (a NaN lr trained silently;
    torch refused the rest only inside every worker's first step), in one line naming the flag."""
    for bad, message in [({"optimizer": "rmsprop"}, "--optimizer: input should be 'sgd' or 'adamw', got 'rmsprop'"),
                         ({"lr": float("nan")}, "--lr: input should be a finite number, got nan"),
                         ({"momentum": 1.0}, "--momentum: input should be less than 1, got 1.0"),
                         ({"weight_decay": -1e-4}, "--weight-decay: input should be greater than or equal to 0"),
                         ({"label_smoothing": 1.5}, "--label-smoothing: input should be less than 1"),
                         ({"warmup_epochs": 4, "epochs": 3}, "--warmup-epochs must be in [0, 3] (the epochs), got 4.0"),
                         ({"augment": {"scale": 1.0}}, "--scale: input should be less than 1"),
                         ({"augment": {"erase_p": 2}}, "--erase-p: input should be less than or equal to 1"),
                         ({"augment": {"erase_area": [0.3, 0.1]}}, "erase_area must be MIN,MAX"),
                         ({"epochs": 2, "learning_rate": 1}, "learning_rate: extra inputs are not permitted")]:
        with pytest.raises(ValidationError) as exc:
            Recipe.model_validate(bad)
        assert one_line(exc.value.errors()).startswith(message), one_line(exc.value.errors())
    assert Recipe.model_validate(json.loads(json.dumps(Recipe(epochs=3).model_dump()))) == Recipe(epochs=3)


def test_run_trains_through_a_wrapper_that_shares_the_weights():
    """The GPU recipe hands Run a ``torch.compile`` wrapper as ``net`` (Ray Train hands it DDP):
    Run must train through the wrapper, which has no ``len()``, and the weights that move are
    the model's own."""
    images = np.random.default_rng(1).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    data = to_device(images, np.arange(64) % 7, torch.device("cpu"))
    model = build_model("small_cnn")
    calls = []

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def __len__(self):  # like torch.compile's OptimizedModule, which raises on len()
            raise TypeError("no len()")

        def forward(self, x):
            calls.append(len(x))
            return self.inner(x)

    before = [p.detach().clone() for p in model.parameters()]
    run = Run(model, Recipe(epochs=1, batch_size=32), 48, Normalization(0.5, 0.25), data, data, net=Wrapper(model))
    run.epoch()
    assert calls == [32, 32]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.timeout(120)
def test_gpu_training_on_a_cluster_without_gpus_is_refused_not_waited_for(synthetic_catalog, tmp_path, ray_session):
    """Ray Train would retry its worker group for ever; the driver refuses at once."""
    from fer_ray.cli import main

    rc = main(["train", "--catalog", str(synthetic_catalog), "--model", "small_cnn", "--epochs", "1",
               "--workers", "1", "--gpu", "--run-dir", str(tmp_path / "run")])
    assert rc == 2 and not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="--workers 2 x --cpus-per-worker 1.5 need 3 CPUs but the Ray cluster has 2"):
        train(TrainConfig(catalog=str(synthetic_catalog), run_dir=str(tmp_path / "run"), workers=2,
                          cpus_per_worker=1.5))  # waited for ever, too
    assert not (tmp_path / "run").exists()


def _random_run(recipe: Recipe) -> Run:
    rng = np.random.default_rng(0)
    data = to_device(rng.integers(0, 256, (96, 48, 48), dtype=np.uint8), rng.integers(0, 7, 96), torch.device("cpu"))
    torch.manual_seed(0)
    return Run(build_model("small_cnn"), recipe, 48, Normalization(0.5, 0.25), data, data)


def test_a_diverged_epoch_stops_the_run_instead_of_training_nan_weights():
    run = _random_run(Recipe(epochs=2, batch_size=32, lr=1e12))
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch 1: the train loss is nan; lower --lr \(it was 1e\+12\)"):
        run.epoch()
    assert run.history == []  # the broken epoch is not recorded (nor checkpointed)


@pytest.mark.timeout(300)
def test_a_diverged_ray_train_run_is_one_error_line_and_no_artifact(synthetic_catalog, tmp_path, ray_session, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--catalog", str(synthetic_catalog), "--epochs", "2", "--batch-size", "32",
                 "--lr", "1e12", "--max-failures", "0", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fer-ray train: error: training diverged in epoch 1: the train loss is nan")
    assert err.endswith("start afresh (--overwrite or another --run-dir)")
    assert not (run_dir / "artifact").exists()


def test_distillation_teaches_what_the_teacher_says_and_nothing_without_weight():
    """With all of the loss on the teacher, the student learns the teacher's answer even where the
    labels say otherwise; with none of it, the run is the plain run, step for step."""
    rng = np.random.default_rng(2)
    data = to_device(rng.integers(0, 256, (96, 48, 48), dtype=np.uint8), rng.integers(0, 7, 96), torch.device("cpu"))
    teacher = torch.full((96, 7), 0.02)
    teacher[:, 3] = 0.88  # "surprise"... whatever the labels are

    def run(weight, teach):
        torch.manual_seed(0)
        recipe = Recipe(epochs=4, batch_size=32, lr=0.05, distill_weight=weight)
        r = Run(build_model("small_cnn"), recipe, 48, Normalization(0.5, 0.25), data, data, teacher=teach)
        while not r.done:
            r.epoch()
        return r.model

    student = run(1.0, teacher).eval()
    with torch.no_grad():
        answers = student((data[0].float()[:, None] / 255 - 0.5) / 0.25).argmax(1)
    assert (answers == 3).float().mean() > 0.9
    plain, unweighted = run(0.0, None), run(0.0, teacher)
    for (name, a), b in zip(plain.state_dict().items(), unweighted.state_dict().values()):
        assert torch.equal(a, b), name


def test_tempered_targets_soften_with_temperature():
    from fer_ray.training.loop import tempered

    probs = torch.tensor([[0.7, 0.2, 0.1, 0, 0, 0, 0]])
    assert torch.allclose(tempered(probs, 1.0)[0, :3], probs[0, :3], atol=1e-6)
    hot = tempered(probs, 4.0)
    assert torch.allclose(hot.sum(1), torch.ones(1)) and hot[0, 0] < 0.7 and hot[0, 1] > 0.2


@pytest.mark.timeout(300)
def test_cli_train_with_a_teacher_records_it(small_artifact, synthetic_catalog, tmp_path, ray_session, capsys):
    run_dir = tmp_path / "student"
    assert main(["train", "--catalog", str(synthetic_catalog), "--model", "small_cnn", "--epochs", "2",
                 "--batch-size", "32", "--teacher", str(small_artifact), str(small_artifact), "--distill-weight", "0.7",
                 "--run-dir", str(run_dir)]) == 0
    meta = read_meta(run_dir / "artifact")
    assert meta["teacher"] == [str(small_artifact)] * 2 and meta["recipe"]["distill_weight"] == 0.7
    assert meta["epochs_trained"] == 2 and "val" in meta["metrics"]
    assert main(["train", "--catalog", str(synthetic_catalog), "--teacher", "no-such-model",
                 "--run-dir", str(tmp_path / "other")]) == 2
    assert "no-such-model not found: neither a folder nor the name of a model that ships" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


@pytest.mark.timeout(300)
def test_fit_local_distils_from_its_teachers_too(small_artifact, synthetic_catalog):
    """The single-process path (the GPU recipe, benchmarks) takes teachers as Ray Train's does."""
    from fer_ray.training.local import fit_local

    _, history, meta = fit_local(str(synthetic_catalog), "small_cnn", Recipe(epochs=1, **FAST), device="cpu",
                                 teacher=(str(small_artifact),))
    assert len(history) == 1 and meta["teacher"] == [str(small_artifact)]
    _, _, plain = fit_local(str(synthetic_catalog), "small_cnn", Recipe(epochs=1, **FAST), device="cpu")
    assert "teacher" not in plain
