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
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fer_ray.artifacts import read_meta, save_cnn, load_artifact
from fer_ray.data.catalog import read_manifest, split_dir
from fer_ray.emotions import NUM_CLASSES
from fer_ray.models import build_model, parameter_counts
from fer_ray.models.inputs import Normalization
from fer_ray.training.loop import Recipe, evaluate, make_optimizer, make_scheduler, steps_per_epoch, to_device, train_epoch
from fer_ray.training.transfer import freeze_stages

STATE_FILE = "state.pt"


@dataclass
class TrainConfig:
    catalog: str
    run_dir: str
    model: str = "small_cnn"
    input_size: int | None = None  # network input; default: the catalog's image size
    recipe: Recipe = field(default_factory=Recipe)
    workers: int = 1
    gpu: bool = False
    cpus_per_worker: float = 1.0
    name: str = "train"
    checkpoint_every: int = 1
    max_failures: int = 1
    init_from: str | None = None  # artifact to fine-tune (transfer learning)
    freeze: int = 0  # stages frozen: first N, or all but the last K when negative
    weights: str | None = None  # local weights file to start from
    eval_tta: str = "none"
    fault_epoch: int | None = None  # testing aid: fail once at this epoch to exercise recovery

    def __post_init__(self):
        if isinstance(self.recipe, dict):
            self.recipe = Recipe.from_dict(self.recipe)
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")


def _resolve(cfg: TrainConfig, manifest: dict) -> dict:
    """Architecture, sizes and normalisation: from the catalog, or from the artifact to transfer."""
    if cfg.init_from:
        meta = read_meta(cfg.init_from)
        if meta["kind"] != "cnn":
            raise ValueError(f"--init-from needs a CNN artifact; {cfg.init_from} is {meta['kind']}")
        return {"architecture": meta["architecture"], "input_size": meta["input_size"],
                "normalization": meta["normalization"]}
    return {"architecture": cfg.model, "input_size": cfg.input_size or manifest["image_size"],
            "normalization": {"mean": manifest["pixel_mean"], "std": manifest["pixel_std"]}}


def train(cfg: TrainConfig, log=print) -> dict:
    """Train on Ray, write ``run_dir/artifact`` and evaluation reports; return a summary."""
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fer_ray.runtime import init_ray

    manifest = read_manifest(cfg.catalog)
    resolved = _resolve(cfg, manifest)
    build_model(resolved["architecture"], NUM_CLASSES, resolved["input_size"])  # fail fast on bad names
    run_dir = Path(cfg.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_resumable(run_dir, cfg)
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg) | {"resolved": resolved}, indent=2))
    init_ray()

    datasets = {split: ray.data.read_parquet(str(split_dir(cfg.catalog, split)), columns=["image", "label"])
                .materialize() for split in ("train", "val")}
    worker_cfg = {**asdict(cfg), **resolved, "fault_marker": str(run_dir / ".fault-injected")}
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker_cfg,
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.name, storage_path=str(run_dir / "ray"),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets,
    )
    t0 = time.time()
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint (error: {result.error})")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    model = build_model(resolved["architecture"], NUM_CLASSES, resolved["input_size"])
    model.load_state_dict(state["model"])
    history = state["history"]
    meta = {
        "architecture": resolved["architecture"], "num_classes": NUM_CLASSES,
        "input_size": resolved["input_size"], "image_size": manifest["image_size"], "in_channels": 1,
        "normalization": resolved["normalization"],
        "catalog": {"path": str(Path(cfg.catalog).resolve()), "sha256": manifest["catalog_sha256"]},
        "recipe": cfg.recipe.to_dict(), "workers": cfg.workers, "gpu": cfg.gpu,
        "parameters": state["parameters"],
        "transfer": {"init_from": cfg.init_from, "freeze": cfg.freeze, "frozen_stages": state["frozen_stages"]}
        if cfg.init_from else None,
        "epochs_trained": len(history),
    }
    artifact = save_cnn(str(run_dir / "artifact"), model, meta)
    (run_dir / "metrics.json").write_text(json.dumps({"history": history}, indent=2))
    log(f"train: {len(history)} epochs in {time.time() - t0:.1f} s; artifact {artifact}")

    from fer_ray.evaluation.evaluate import evaluate_artifact

    evals = {}
    for split in ("val", "test"):
        if split in manifest["shards"]:
            evals[split] = evaluate_artifact(str(artifact), cfg.catalog, split, str(run_dir / f"eval-{split}"),
                                             tta=cfg.eval_tta)
            log(f"train: {split} accuracy {evals[split]['accuracy']:.4f} "
                f"(macro F1 {evals[split]['macro']['f1']:.4f}, TTA {cfg.eval_tta})")
    return {"artifact": str(artifact), "history": history, "evaluations": evals,
            "parameters": state["parameters"], "run_dir": str(run_dir)}


# Settings that shape the training trajectory: a rerun that resumes must keep them.
TRAJECTORY = ("catalog", "model", "input_size", "recipe", "workers", "init_from", "freeze", "weights")


def _check_resumable(run_dir: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a run directory's checkpoints under different training settings.

    Rerunning the same command resumes from the last checkpoint (Ray Train restores a run by
    name and storage path); a changed recipe would silently mix two schedules instead.
    """
    previous = run_dir / "config.json"
    if not (previous.exists() and (run_dir / "ray" / cfg.name).exists()):
        return
    old = json.loads(previous.read_text())
    new = asdict(cfg)
    changed = [k for k in TRAJECTORY if old.get(k) != new.get(k)]
    if old.get("name") == cfg.name and changed:
        raise ValueError(
            f"{run_dir} holds run {cfg.name!r} trained with different {', '.join(changed)}; rerun with the "
            "same settings to resume it, or use a new --run-dir (or --name) to start another run")


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


def _reduce(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    """Sum (or min) numbers across workers; identity on a single worker."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN if op == "min" else torch.distributed.ReduceOp.SUM)
    return t.tolist()


def _sync_buffers(model: torch.nn.Module) -> None:
    """Give every worker rank 0's batch-norm statistics, so validation scores one model."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, 0)


def train_loop_per_worker(cfg: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    recipe = Recipe.from_dict(cfg["recipe"])
    norm = Normalization(**cfg["normalization"])
    input_size = cfg["input_size"]
    torch.manual_seed(recipe.seed)

    images, labels = to_device(*_shard_arrays("train"), device)
    val_images, val_labels = to_device(*_shard_arrays("val"), device)

    model = build_model(cfg["architecture"], NUM_CLASSES, input_size, weights=cfg.get("weights"))
    frozen: tuple = ()
    if cfg.get("init_from"):
        _, state = load_artifact(cfg["init_from"])
        model.load_state_dict(state)
        frozen = freeze_stages(model, cfg["freeze"])
    if device.type == "cuda" and recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = ray.train.torch.prepare_model(model)  # moves to device; DDP when there are 2+ workers

    steps = int(_reduce([steps_per_epoch(len(images), recipe.batch_size)], device, "min")[0])
    opt = make_optimizer(model.parameters(), recipe)
    scheduler = make_scheduler(opt, recipe, steps)
    generator = torch.Generator(device=device)
    generator.manual_seed(recipe.seed * 1000 + rank)
    history: list[dict] = []

    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"][rank % len(state["generator"])].cpu())
        history = list(state["history"])

    counts = parameter_counts(model)
    frozen_names = [n for n in model.stage_names() if any(model.stage(n) is m for m in frozen)]
    if rank == 0 and not history:
        print(f"[train] {cfg['architecture']} {counts['total']:,} parameters "
              f"({counts['trainable']:,} trainable, {counts['frozen']:,} frozen {frozen_names}); "
              f"{ctx.get_world_size()} worker(s) on {device.type}; {steps} steps/epoch", flush=True)

    for epoch in range(len(history), recipe.epochs):
        if cfg.get("fault_epoch") == epoch and rank == 0 and not Path(cfg["fault_marker"]).exists():
            Path(cfg["fault_marker"]).touch()
            raise RuntimeError(f"injected failure at epoch {epoch} (testing recovery)")
        stats = train_epoch(net, images, labels, opt, scheduler, recipe, input_size, norm, generator, steps, frozen)
        _sync_buffers(model)
        val = evaluate(model, val_images, val_labels, recipe, input_size, norm)
        loss_sum, n_img, t_max = stats["train_loss"] * stats["train_images"], stats["train_images"], stats["train_seconds"]
        loss_sum, n_img, v_loss, v_correct, v_count = _reduce(
            [loss_sum, n_img, val["loss_sum"], val["correct"], val["count"]], device)
        t_max = -_reduce([-t_max], device, "min")[0]
        row = {"epoch": epoch + 1, "train_loss": loss_sum / n_img, "val_loss": v_loss / max(1, v_count),
               "val_acc": v_correct / max(1, v_count), "lr": opt.param_groups[0]["lr"],
               "images_per_s": n_img / max(t_max, 1e-9), "epoch_seconds": t_max}
        history.append(row)
        if rank == 0:
            print(f"[train] epoch {epoch + 1}/{recipe.epochs} loss {row['train_loss']:.4f} "
                  f"val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.4f} "
                  f"{row['images_per_s']:.0f} img/s", flush=True)
        last = epoch + 1 == recipe.epochs
        if (epoch + 1) % cfg["checkpoint_every"] == 0 or last:
            gens = [generator.get_state()]  # every rank's RNG, gathered for an exact resume
            if torch.distributed.is_initialized():
                gathered = [None] * ctx.get_world_size()
                torch.distributed.all_gather_object(gathered, gens[0])
                gens = gathered
            _report(row, rank, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": scheduler.state_dict(),
                "generator": gens, "history": history, "parameters": counts, "frozen_stages": frozen_names,
            })
        else:
            ray.train.report(row)


def _report(row: dict, rank: int, state: dict) -> None:
    """Report metrics on every rank; rank 0 attaches the checkpoint."""
    import ray.train

    if rank != 0:
        ray.train.report(row)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / STATE_FILE)
        ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(tmp))
