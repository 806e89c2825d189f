"""What a training run is made of: the augmentation, the recipe and the run's settings.

Each setting's type, range, default and help text are written once, here, as a pydantic field:
``fer-ray train``'s flags and ``--config`` YAML are made from these fields (``fer_ray.cli``;
an alias is the flag's name), ``run.json`` records the same object, Ray Train workers receive
it, and a resume compares it. Nothing here imports torch, so the command line loads fast.

Ranges are checked when a config is built, on the driver: torch refuses some values only
inside the first step on every worker (retried by FailureConfig), and a NaN learning rate it
accepts and trains garbage.
"""

import os
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fer_ray.choices import MAX_INPUT_SIZE, MODEL_NAMES, OPTIMIZERS, SCHEDULES, TTA_MODES
from fer_ray.errors import FerRayError

FINITE = {"allow_inf_nan": False}


class Augment(BaseModel):
    """Batched on-device augmentation (``training.augment.augment_batch``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True)

    flip: bool = Field(True, description="horizontal flips")
    rotate_deg: float = Field(10.0, ge=0, le=180, description="max rotation, degrees", alias="rotate")
    # a zoom factor of 1 - 1 would divide by 0
    scale: float = Field(0.10, ge=0, lt=1, description="max zoom in/out, fraction")
    translate_px: float = Field(4.0, ge=0, **FINITE, description="max shift, pixels at 48 px", alias="translate")
    erase_p: float = Field(0.0, ge=0, le=1, description="random-erasing probability")
    erase_area: tuple[float, float] = Field((0.02, 0.15), description="MIN, MAX fraction of the image one erase covers")
    photo_p: float = Field(0.0, ge=0, le=1, description="probability a face is degraded like one cut from a photo "
                                                        "(shrunk, blurred, relit, noised)")

    @model_validator(mode="after")
    def _area(self):
        low, high = self.erase_area
        if not 0 < low <= high <= 1:
            raise FerRayError(f"erase_area must be MIN,MAX with 0 < MIN <= MAX <= 1, got {self.erase_area}")
        return self

    @property
    def active(self) -> bool:
        return (self.flip or self.rotate_deg > 0 or self.scale > 0 or self.translate_px > 0 or self.erase_p > 0
                or self.photo_p > 0)


NO_AUGMENT = Augment(flip=False, rotate_deg=0, scale=0, translate_px=0, erase_p=0, photo_p=0)


class Recipe(BaseModel):
    """How to train. Defaults are the reference VGG16-BN FER2013 recipe."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1, description="per worker")
    optimizer: Literal[OPTIMIZERS] = Field("sgd", description="sgd = SGD with Nesterov momentum")
    lr: float = Field(0.05, gt=0, **FINITE, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, **FINITE)
    schedule: Literal[SCHEDULES] = "onecycle"
    warmup_epochs: float = Field(0.0, ge=0, description="cosine schedule only (one-cycle has its own warm-up)")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    distill_weight: float = Field(
        0.5, ge=0, le=1, description="with --teacher: the share of the loss spent matching the teachers' "
                                     "probabilities (the rest: the labels)")
    distill_temperature: float = Field(
        2.0, gt=0, **FINITE, description="with --teacher: softmax temperature of that matching (higher weighs the "
                                         "second choices more)")
    augment: Augment = Field(default_factory=Augment)
    amp: bool = Field(True, description="bf16 autocast (on by default on CUDA and on CPUs with native bf16)")
    channels_last: bool = Field(True, description="NHWC memory layout: faster convolutions on GPUs and CPUs")
    eval_batch_size: int = Field(1024, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _warmup(self):
        if self.warmup_epochs > self.epochs:
            raise FerRayError(f"--warmup-epochs must be in [0, {self.epochs}] (the epochs), got {self.warmup_epochs}")
        return self


class TrainConfig(BaseModel):
    """One ``fer-ray train`` run."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True)

    catalog: str
    run_dir: str = Field(description="checkpoints, artifact, metrics and reports go here")
    model: Optional[Literal[tuple(sorted(MODEL_NAMES))]] = Field(
        None, description="architecture (default small_cnn; with --init-from, the artifact's)")
    input_size: Optional[int] = Field(None, ge=1, le=MAX_INPUT_SIZE, description="network input side (default: the "
                                      "catalog's; e.g. 192 to upscale for resnet50)")
    recipe: Recipe = Field(default_factory=Recipe)
    workers: int = Field(1, ge=1, description="Ray Train workers (DDP)")
    gpu: bool = Field(False, description="one GPU per worker (NCCL, bf16, channels_last)")
    cpus_per_worker: Optional[float] = Field(
        None, gt=0, **FINITE,
        description="CPUs per Train worker (default: the cluster's CPUs shared by the workers, at most a node's)")
    name: str = Field("train", description="run name; rerunning the same run dir and name resumes")
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints")
    max_failures: int = Field(1, ge=-1, description="worker failures retried from the last checkpoint (-1: no limit)")
    init_from: Optional[str] = Field(
        None, description="artifact to fine-tune (transfer learning); sets model, input size, normalisation")
    freeze: int = Field(0, description="with --init-from: freeze the first N stages, or all but the last K with -K")
    weights: Optional[str] = Field(None, description="local weights file to start from (safetensors or a state dict)")
    teacher: tuple[str, ...] = Field(
        (), description="artifacts (CNNs or ensembles; folders or shipped models' names) whose probabilities on "
                        "each training face, flip-averaged and averaged across them, the model learns beside the "
                        "labels: distillation")
    eval_tta: Literal[TTA_MODES] = Field("none", description="test-time augmentation for the final evaluation",
                                         alias="tta")
    overwrite: bool = Field(False, description="delete what --run-dir holds (another run, or this one with other "
                                               "settings) and start afresh")
    fault_epoch: Optional[int] = Field(None, description="testing aid: fail once at this epoch to exercise recovery")

    @model_validator(mode="after")
    def _starting_point(self):
        if self.freeze and not self.init_from:
            raise FerRayError("--freeze needs --init-from (the artifact whose early stages to freeze)")
        if self.weights and self.init_from:  # the artifact's weights would silently replace the file's
            raise FerRayError("--weights and --init-from both give starting weights; pass one of them")
        if self.model is None and not self.init_from:
            self.model = "small_cnn"
        # Ray Train runs each worker in a directory of its own: relative paths would not resolve.
        for key in PATH_KEYS:
            if getattr(self, key):
                setattr(self, key, os.path.abspath(getattr(self, key)))
        return self


# Settings that shape the training trajectory: a rerun that resumes must keep them.
TRAJECTORY = ("catalog", "model", "input_size", "recipe", "workers", "init_from", "freeze", "weights", "teacher")
PATH_KEYS = ("catalog", "init_from", "weights")  # the teacher may be a shipped model's name: see train()
