"""The training loop in plain PyTorch: recipe, optimiser, schedule, one epoch, validation.

No Ray here: the Ray Train worker (``training/trainer.py``), the GPU recipe script and the
benchmarks all drive these same functions. The epoch works on a dataset held as one uint8
tensor on the training device (48 px faces are tiny: a million of them is 2.3 GB), reshuffled
every epoch and augmented on-device, so the GPU never waits for a data loader.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from fer_ray.errors import FerRayError
from fer_ray.models.forward import autocast, run_batches
from fer_ray.models.inputs import Normalization, to_model_input
from fer_ray.training.augment import augment_batch
from fer_ray.training.config import Recipe


class TrainingDiverged(FerRayError):
    """The loss went to inf/NaN: every later epoch would train (and save) a broken model."""


def make_optimizer(params, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimiser over the trainable parameters.

    On CUDA the fused kernels update every parameter in a handful of launches instead of a few
    per tensor: at 48 px a VGG16 step is short enough that launch overhead is what limits it.
    """
    params = [p for p in params if p.requires_grad]
    fused = bool(params) and all(p.is_cuda for p in params)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
                               weight_decay=recipe.weight_decay, fused=fused or None)
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=fused or None)


def make_scheduler(opt: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int):
    total = max(1, recipe.epochs * steps_per_epoch)
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total)
    if recipe.schedule == "cosine":
        warm = int(recipe.warmup_epochs * steps_per_epoch)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped; at least one step)."""
    return max(1, n // batch_size)


def train_epoch(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                opt: torch.optim.Optimizer, scheduler, recipe: Recipe, input_size: int,
                norm: Normalization, generator: torch.Generator, steps: int,
                frozen: tuple[torch.nn.Module, ...] = (), targets: torch.Tensor | None = None) -> dict:
    """One pass of ``steps`` shuffled batches over (images uint8 (N,H,W), labels) on their device.

    ``frozen`` modules stay in eval mode so their batch-norm statistics do not move either.
    ``targets`` (N, 7), a teacher's probabilities already tempered (``tempered``), add the
    distillation term: the loss is ``(1 - w) * CE(labels) + w * T^2 * KL(targets || softmax(z / T))``
    (Hinton et al.; T^2 keeps the term's gradients on the scale of the labels' at any T).
    Returns the mean loss, accuracy on the augmented batches, image count and seconds.
    """
    device = images.device
    model.train()
    for m in frozen:
        m.eval()
    bs = min(recipe.batch_size, len(images))
    if steps * bs > len(images):
        raise FerRayError(f"{steps} steps of {bs} need {steps * bs} images, this worker has {len(images)}")
    perm = torch.randperm(len(images), device=device, generator=generator)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    start = time.perf_counter()
    for step in range(steps):
        idx = perm[step * bs : (step + 1) * bs]
        x = to_model_input(images[idx], input_size, norm)
        if recipe.augment.active:
            x = augment_batch(x, recipe.augment, generator)
        if recipe.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[idx]
        with autocast(device, recipe.amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
        if targets is not None:
            t, w = recipe.distill_temperature, recipe.distill_weight
            match = F.kl_div(F.log_softmax(logits.float() / t, 1), targets[idx], reduction="batchmean")
            loss = (1 - w) * loss + w * t * t * match
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        scheduler.step()
        loss_sum += loss.detach() * len(idx)
        correct += (logits.argmax(1) == y).sum()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    n = steps * bs
    return {"train_loss": loss_sum.item() / n, "train_acc": correct.item() / n,
            "train_images": n, "train_seconds": time.perf_counter() - start}


def tempered(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) from probabilities: the softened targets distillation matches."""
    return torch.softmax(torch.log(probs.float().clamp_min(1e-8)) / temperature, 1)


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe,
             input_size: int, norm: Normalization, tta: str = "none") -> dict:
    """Summed loss and correct count on one (local) split; callers reduce across workers."""
    device = images.device
    probs = run_batches(model, images, input_size, norm, device, recipe.eval_batch_size, recipe.amp,
                        recipe.channels_last, tta)
    y = labels.cpu()
    nll = F.nll_loss(torch.log(probs.clamp_min(1e-12)), y, reduction="sum") if len(y) else torch.zeros(())
    return {"loss_sum": float(nll), "correct": int((probs.argmax(1) == y).sum()), "count": len(y)}


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """Sum (or min) numbers across a torch.distributed group; identity without one."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(values)
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN if op == "min" else torch.distributed.ReduceOp.SUM)
    return t.tolist()


def sync_buffers(model: torch.nn.Module) -> None:
    """Give every process rank 0's batch-norm statistics, so validation scores one model."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, 0)


class Run:
    """One process's training state and its epochs: model, optimiser, schedule, data, RNG.

    Used as is for single-process training (``fit_local``, the GPU recipe, benchmarks) and
    by each Ray Train worker, where ``net`` is the DDP-wrapped model and sums are reduced
    across workers. ``state_dict``/``load_state_dict`` make a checkpoint resume exactly.
    ``teacher`` holds a teacher's probabilities for each training face (same order): distillation.
    """

    def __init__(self, model: torch.nn.Module, recipe: Recipe, input_size: int, norm: Normalization,
                 train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                 frozen: tuple[torch.nn.Module, ...] = (), net: torch.nn.Module | None = None, rank: int = 0,
                 teacher: torch.Tensor | None = None):
        self.model, self.net = model, net if net is not None else model
        self.recipe, self.input_size, self.norm = recipe, input_size, norm
        self.train, self.val, self.frozen = train, val, frozen
        self.device = train[0].device
        self.targets = None if teacher is None else tempered(teacher.to(self.device), recipe.distill_temperature)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
        self.steps = int(all_reduce([steps_per_epoch(len(train[0]), recipe.batch_size)], "min")[0])
        self.opt = make_optimizer(model.parameters(), recipe)
        self.scheduler = make_scheduler(self.opt, recipe, self.steps)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(recipe.seed * 1000 + rank)
        self.history: list[dict] = []

    @property
    def done(self) -> bool:
        return len(self.history) >= self.recipe.epochs

    def epoch(self) -> dict:
        """Train one epoch, validate, reduce across processes; append and return the row."""
        stats = train_epoch(self.net, *self.train, self.opt, self.scheduler, self.recipe, self.input_size,
                            self.norm, self.generator, self.steps, self.frozen, self.targets)
        sync_buffers(self.model)
        val = evaluate(self.model, *self.val, self.recipe, self.input_size, self.norm)
        loss_sum, n_img, v_loss, v_correct, v_count = all_reduce(
            [stats["train_loss"] * stats["train_images"], stats["train_images"],
             val["loss_sum"], val["correct"], val["count"]])
        seconds = -all_reduce([-stats["train_seconds"]], "min")[0]  # the slowest process
        row = {"epoch": len(self.history) + 1, "train_loss": loss_sum / n_img,
               "val_loss": v_loss / max(1, v_count), "val_acc": v_correct / max(1, v_count),
               "lr": self.opt.param_groups[0]["lr"], "images_per_s": n_img / max(seconds, 1e-9),
               "epoch_seconds": seconds}
        if not math.isfinite(row["train_loss"]):  # the same reduced number on every rank: all stop together
            raise TrainingDiverged(f"training diverged in epoch {row['epoch']}: the train loss is "
                                   f"{row['train_loss']}; lower --lr (it was {self.recipe.lr:g})")
        self.history.append(row)
        return row

    def rng_state(self) -> dict:
        """Every random stream an epoch draws from: ours (shuffle, augment) and torch's (dropout)."""
        state = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch"].cpu())
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"].cpu(), self.device)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": self.rng_state(),
                "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.set_rng_state(state["rng"])
        self.history = list(state["history"])


def epoch_line(row: dict, epochs: int) -> str:
    return (f"[train] epoch {row['epoch']}/{epochs} loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
            f"val_acc {row['val_acc']:.4f} {row['images_per_s']:.0f} img/s")


def to_device(images, labels, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Numpy (N,H,W) uint8 + (N,) labels -> tensors resident on ``device``."""
    return (torch.tensor(images, dtype=torch.uint8, device=device),
            torch.tensor(labels, dtype=torch.long, device=device))
