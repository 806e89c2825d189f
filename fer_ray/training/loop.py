"""The training loop in plain PyTorch: recipe, optimiser, schedule, one epoch, validation.

No Ray here: the Ray Train worker (``training/trainer.py``), the GPU recipe script and the
benchmarks all drive these same functions. The epoch works on a dataset held as one uint8
tensor on the training device (48 px faces are tiny: a million of them is 2.3 GB), reshuffled
every epoch and augmented on-device, so the GPU never waits for a data loader.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F

from fer_ray.models.forward import autocast, run_batches
from fer_ray.models.inputs import Normalization, to_model_input
from fer_ray.training.augment import Augment, augment_batch

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")


@dataclass
class Recipe:
    """How to train. Defaults are the reference VGG16-BN FER2013 recipe (see issue 3)."""

    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"  # SGD with Nesterov momentum, or AdamW
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_epochs: float = 0.0  # cosine only; one-cycle has its own warm-up
    label_smoothing: float = 0.1
    augment: Augment = field(default_factory=Augment)
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    eval_batch_size: int = 1024
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.augment, dict):
            self.augment = Augment(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.augment.items()})
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {SCHEDULES}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs, batch_size and lr must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown recipe keys {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(**d)


def make_optimizer(params, recipe: Recipe) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
                               weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


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
                frozen: tuple[torch.nn.Module, ...] = ()) -> dict:
    """One pass of ``steps`` shuffled batches over (images uint8 (N,H,W), labels) on their device.

    ``frozen`` modules stay in eval mode so their batch-norm statistics do not move either.
    Returns the mean loss, accuracy on the augmented batches, image count and seconds.
    """
    device = images.device
    model.train()
    for m in frozen:
        m.eval()
    channels_last = recipe.channels_last and device.type == "cuda"
    bs = min(recipe.batch_size, len(images))
    if steps * bs > len(images):
        raise ValueError(f"{steps} steps of {bs} need {steps * bs} images, this worker has {len(images)}")
    perm = torch.randperm(len(images), device=device, generator=generator)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    start = time.perf_counter()
    for step in range(steps):
        idx = perm[step * bs : (step + 1) * bs]
        x = to_model_input(images[idx], input_size, norm, channels_last)
        if recipe.augment.active:
            x = augment_batch(x, recipe.augment, generator)
        y = labels[idx]
        with autocast(device, recipe.amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        scheduler.step()
        loss_sum += loss.detach() * len(idx)
        correct += (logits.argmax(1) == y).sum()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    n = steps * bs
    return {"train_loss": loss_sum.item() / n, "train_acc": correct.item() / n,
            "train_images": n, "train_seconds": seconds}


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe,
             input_size: int, norm: Normalization, tta: str = "none") -> dict:
    """Summed loss and correct count on one (local) split; callers reduce across workers."""
    device = images.device
    probs = run_batches(model, images, input_size, norm, device, recipe.eval_batch_size, recipe.amp,
                        recipe.channels_last and device.type == "cuda", tta)
    y = labels.cpu()
    nll = F.nll_loss(torch.log(probs.clamp_min(1e-12)), y, reduction="sum") if len(y) else torch.zeros(())
    return {"loss_sum": float(nll), "correct": int((probs.argmax(1) == y).sum()), "count": len(y)}


def to_device(images, labels, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Numpy (N,H,W) uint8 + (N,) labels -> tensors resident on ``device``."""
    return (torch.tensor(images, dtype=torch.uint8, device=device),
            torch.tensor(labels, dtype=torch.long, device=device))
