"""Ray Train wiring: ``train(TrainConfig)`` runs the plain loop on K workers (CPU or GPU).

The driver reads the catalog's train and val splits with Ray Data (materialised first: a lazy
pipeline feeding 2 workers on 2 CPUs hangs), hands them to a ``TorchTrainer`` and, when it is
done, turns the final checkpoint into an artifact and evaluates it. Each worker takes its
shard once, keeps it on its device and runs ``training.loop`` epochs; DDP (gloo on CPU, NCCL
on GPU) averages gradients. Rank 0 writes a checkpoint every ``checkpoint_every`` epochs, so a
failed worker is restarted from it (``FailureConfig``) and rerunning the same run directory
and name resumes instead of starting over.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fer_ray.artifacts import load_artifact, load_cnn, read_meta, save_cnn
from fer_ray.data.catalog import Catalog
from fer_ray.emotions import NUM_CLASSES
from fer_ray.errors import FerRayError
from fer_ray.models import build_model, parameter_counts
from fer_ray.models.inputs import Normalization
from fer_ray.pretrained import shipped_or_path
from fer_ray.rundir import Run as RunFolder, open_run
from fer_ray.training.local import artifact_meta, load_teacher, teacher_probs
from fer_ray.training.config import TRAJECTORY, Recipe, TrainConfig
from fer_ray.training.loop import Run, TrainingDiverged, epoch_line, to_device
from fer_ray.training.transfer import freeze_stages, resolve_freeze

STATE_FILE = "state.pt"
log = logging.getLogger(__name__)


def _resolve(cfg: TrainConfig, catalog: Catalog) -> dict:
    """Architecture, sizes and normalisation: from the catalog, or from the artifact to transfer."""
    if cfg.init_from:
        meta = read_meta(cfg.init_from)
        if meta["kind"] != "cnn":
            raise FerRayError(f"--init-from needs a CNN artifact; {cfg.init_from} is {meta['kind']}")
        for flag, given, kept in (("--model", cfg.model, meta["architecture"]),
                                  ("--input-size", cfg.input_size, meta["input_size"])):
            if given is not None and given != kept:
                raise FerRayError(f"{flag} {given} conflicts with --init-from {cfg.init_from} ({kept}); "
                                  f"fine-tuning keeps the artifact's {flag[2:]}, so drop {flag}")
        return {"architecture": meta["architecture"], "input_size": meta["input_size"],
                "normalization": meta["normalization"]}
    return {"architecture": cfg.model, "input_size": cfg.input_size or catalog.image_size,
            "normalization": catalog.normalization}


def _check_start(cfg: TrainConfig, resolved: dict) -> None:
    """Build the starting model (and load the teachers) on the driver, as each worker will: a
    wrong architecture, weights file, artifact, ``--freeze`` or ``--teacher`` is one clear error
    here, not a failure in every worker (retried by FailureConfig) before Ray gives up."""
    for teacher in cfg.teacher:
        load_teacher(teacher)
    if cfg.init_from:  # load_cnn: weights that do not fit model.json's architecture are an ArtifactError
        model, _ = load_cnn(cfg.init_from)
        resolve_freeze(model, cfg.freeze)
    else:
        build_model(resolved["architecture"], NUM_CLASSES, resolved["input_size"], weights=cfg.weights)


def _trainer_class():
    """``TorchTrainer`` with Ctrl+C left to Python: a KeyboardInterrupt, as in every other stage.

    Ray Train 2.60's fit installs a SIGINT handler of its own and leaves it behind: its first
    Ctrl+C aborts the run and then exits the whole program with status 0 or 1 from inside the
    handler (no message, and a pipeline or demo looks finished), its second one is ignored. fer-ray
    answers Ctrl+C itself (exit 130, "rerun the same command to resume"): the run resumes from its
    last checkpoint, which this leaves as Train's abort would.
    """
    from ray.train.torch import TorchTrainer

    class Trainer(TorchTrainer):
        def _register_sigint_handler(self, controller):
            pass

    return Trainer


def train(cfg: TrainConfig, callbacks: tuple = ()) -> dict:
    """Train on Ray, write ``run_dir/artifact`` and evaluation reports; return the summary
    ``result.json`` keeps (which is all a rerun of a finished run does).

    ``callbacks`` go to the run's ``RunConfig`` (a Tune sweep passes ``TuneReportCallback`` so
    each epoch's report reaches its scheduler).
    """
    # trained on, validated on each epoch: checked before anything is written
    catalog = Catalog.open(cfg.catalog).require("train", "val")
    teacher = tuple(os.path.abspath(shipped_or_path(t)) for t in cfg.teacher)  # a folder or a shipped model
    resolved = _resolve(cfg, catalog)
    # teachers as paths Ray Train's workers resolve alike; the model that trains, as config.json records it
    cfg = cfg.model_copy(update={"teacher": teacher, "model": resolved["architecture"]})
    _check_start(cfg, resolved)
    # Rerunning the same command resumes from the last checkpoint (Ray Train restores a run by
    # name and storage path); other settings would silently mix two schedules, so they are
    # refused, and before Ray starts. The catalog's checksum too: one rebuilt in place would
    # otherwise resume the old run.
    settings = cfg.model_dump(include={*TRAJECTORY, "name"}) | {"catalog_sha256": catalog.sha256}
    with open_run(cfg.run_dir, "train", settings, overwrite=cfg.overwrite) as run:
        if run.done:
            return run.done
        return _fit(cfg, run, catalog, resolved, callbacks)


def _fit(cfg: TrainConfig, run: RunFolder, catalog: Catalog, resolved: dict, callbacks: tuple) -> dict:
    """``train``'s work, in its open and unfinished run directory."""
    import ray.data
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from fer_ray.runtime import default_cpus_per_worker, init_ray, require_cpus, require_gpus, train_logging

    init_ray()
    cfg = cfg.model_copy(update={"cpus_per_worker": cfg.cpus_per_worker or default_cpus_per_worker(cfg.workers)})
    # before anything is written: a refused run leaves no run directory behind
    require_cpus(cfg.workers * cfg.cpus_per_worker, f"--workers {cfg.workers} x --cpus-per-worker "
                                                    f"{cfg.cpus_per_worker:g}")
    if cfg.gpu:
        require_gpus(cfg.workers)
    run_dir = run.claim()
    (run_dir / "config.json").write_text(json.dumps(cfg.model_dump() | {"resolved": resolved}, indent=2))

    datasets = {split: ray.data.read_parquet(str(catalog.split_dir(split)))
                .select_columns(["image", "label"]).materialize() for split in ("train", "val")}
    worker_cfg = {**cfg.model_dump(), **resolved, "fault_marker": str(run_dir / ".fault-injected")}
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.gpu else {})
    trainer = _trainer_class()(
        train_loop_per_worker,
        train_loop_config=worker_cfg,
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.name, storage_path=str(run_dir / "ray"),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
            logging_config=train_logging(),
        ),
        datasets=datasets,
    )
    t0 = time.time()
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:  # a diverged run is the recipe's fault: say so in one line
        # Ray hands back each failed worker's exception (wrapped, but still an instance of its class)
        failures = getattr(exc, "worker_failures", None) or {}
        diverged = [getattr(e, "cause", e) for e in failures.values() if isinstance(e, TrainingDiverged)]
        if not diverged:
            raise
        raise TrainingDiverged(f"{diverged[0].args[0]}, and start afresh (--overwrite or another --run-dir)") from None
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint (error: {result.error})")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    model = build_model(resolved["architecture"], NUM_CLASSES, resolved["input_size"])
    model.load_state_dict(state["model"])
    history = state["history"]
    meta = artifact_meta(
        resolved["architecture"], resolved["input_size"], catalog, resolved["normalization"],
        cfg.recipe, state["parameters"], workers=cfg.workers, gpu=cfg.gpu, epochs_trained=len(history),
        teacher=cfg.teacher,
        transfer={"init_from": cfg.init_from, "freeze": cfg.freeze, "frozen_stages": state["frozen_stages"]}
        if cfg.init_from else None)
    artifact = save_cnn(str(run_dir / "artifact"), model, meta)
    log.info(f"train: {len(history)} epochs in {time.time() - t0:.1f} s; artifact {artifact}")

    from fer_ray.evaluation.evaluate import evaluate_splits

    evals = evaluate_splits(str(artifact), catalog, run_dir, tta=cfg.eval_tta, prefix="train: ")
    return run.finish({"artifact": str(artifact), "history": history, "evaluations": evals,
                       "parameters": state["parameters"], "run_dir": str(run_dir)})


def _shard_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """This worker's shard of a dataset as numpy arrays (read once, kept for all epochs)."""
    import ray.train

    images, labels = [], []
    for batch in ray.train.get_dataset_shard(name).iter_batches(batch_size=4096, batch_format="numpy"):
        images.append(batch["image"])
        labels.append(batch["label"])
    if not images:
        return np.zeros((0, 1, 1), np.uint8), np.zeros(0, np.int64)
    return np.concatenate(images), np.concatenate(labels)


def train_loop_per_worker(cfg: dict) -> None:
    """Runs on every Ray Train worker: the plain ``Run`` plus checkpoints and reports."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    recipe = Recipe.model_validate(cfg["recipe"])
    torch.manual_seed(recipe.seed)

    model = build_model(cfg["architecture"], NUM_CLASSES, cfg["input_size"], weights=cfg.get("weights"))
    frozen: tuple = ()
    if cfg.get("init_from"):
        _, state = load_artifact(cfg["init_from"])
        model.load_state_dict(state)
        frozen = freeze_stages(model, cfg["freeze"])
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = ray.train.torch.prepare_model(model)  # moves to device; DDP when there are 2+ workers
    train_images, train_labels = _shard_arrays("train")
    run = Run(model, recipe, cfg["input_size"], Normalization(**cfg["normalization"]),
              to_device(train_images, train_labels, device), to_device(*_shard_arrays("val"), device),
              frozen=frozen, net=net, rank=rank,
              teacher=teacher_probs(cfg["teacher"], train_images, device))

    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=True)
        run.load_state_dict(state | {"rng": state["rngs"][rank % len(state["rngs"])]})

    counts = parameter_counts(model)
    frozen_names = [n for n in model.stage_names() if any(model.stage(n) is m for m in frozen)]
    if rank == 0 and not run.history:
        _progress(f"[train] {cfg['architecture']} {counts['total']:,} parameters "
                  f"({counts['trainable']:,} trainable, {counts['frozen']:,} frozen {frozen_names}); "
                  f"{ctx.get_world_size()} worker(s) on {device.type} ({torch.get_num_threads()} threads each); "
                  f"{run.steps} steps/epoch")
    elif rank == 0:  # restored from a checkpoint: the same command rerun, or a worker failure recovered
        _progress(f"[train] resuming from epoch {len(run.history) + 1} of {recipe.epochs}" if not run.done
                  else f"[train] all {recipe.epochs} epochs were trained before; finishing the run")

    while not run.done:
        epoch = len(run.history)
        if cfg.get("fault_epoch") == epoch and rank == 0 and not Path(cfg["fault_marker"]).exists():
            Path(cfg["fault_marker"]).touch()
            raise RuntimeError(f"injected failure at epoch {epoch} (testing recovery)")
        row = run.epoch()
        if rank == 0:
            _progress(epoch_line(row, recipe.epochs))
        if row["epoch"] % cfg["checkpoint_every"] and not run.done:
            ray.train.report(row)
            continue
        state = run.state_dict()
        rngs = [state.pop("rng")]  # every rank's random streams, gathered for an exact resume
        if torch.distributed.is_initialized():
            rngs = [None] * ctx.get_world_size()
            torch.distributed.all_gather_object(rngs, run.rng_state())
        if rank != 0:  # every rank reports its metrics; rank 0 attaches the checkpoint
            ray.train.report(row)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state | {"rngs": rngs, "parameters": counts, "frozen_stages": frozen_names},
                       Path(tmp) / STATE_FILE)
            ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _progress(line: str) -> None:
    """One progress line on the driver's console, from a Ray Train worker: printed, not logged,
    since Ray forwards what a worker writes to its stdout to the driver's, and fer-ray's
    loggers are set up in the driver.

    Ray Train patches ``print`` in workers to both log and echo it, which shows every line
    twice; writing to the real stdout (forwarded by Ray once) shows it once.
    """
    print(line, file=sys.__stdout__, flush=True)
