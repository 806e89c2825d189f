"""Single-process training without Ray: the GPU recipe script, benchmarks and test fixtures.

Same ``Run`` as the Ray Train workers, same artifact metadata; only the wiring differs.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from fer_ray.data.catalog import Catalog
from fer_ray.emotions import NUM_CLASSES
from fer_ray.inference.cnn import pick_device
from fer_ray.inference.predictor import Predictor
from fer_ray.models import build_model, parameter_counts
from fer_ray.models.inputs import Normalization
from fer_ray.training.loop import Recipe, Run, epoch_line, to_device

log = logging.getLogger(__name__)


def artifact_meta(architecture: str, input_size: int, catalog: Catalog, normalization: dict,
                  recipe: Recipe, parameters: dict, teacher: tuple[str, ...] = (), **extra) -> dict:
    """model.json fields of a CNN trained on ``catalog`` (shared by Ray and local training); a
    distilled model's teachers among them."""
    return {
        "architecture": architecture, "num_classes": NUM_CLASSES, "input_size": input_size,
        "image_size": catalog.image_size, "in_channels": 1, "normalization": normalization,
        "catalog": catalog.identity,
        "recipe": recipe.model_dump(), "parameters": parameters, **({"teacher": list(teacher)} if teacher else {}),
        **extra,
    }


def load_teacher(artifact: str, device: torch.device | str = "cpu") -> Predictor:
    """A teacher of a distillation run (any artifact: its reader refuses one whose labels are not
    the seven emotions), refused in one line where it cannot take flip averaging."""
    teacher = Predictor(artifact, device=str(device))
    teacher.check_tta("flip")
    return teacher


def teacher_probs(artifacts: list[str], images: np.ndarray, device: torch.device) -> torch.Tensor | None:
    """The teachers' probabilities for each training face (uint8 (N, H, W)), on ``device``, or None
    without teachers: the mean of the teachers' (soft voting: on FER2013 two fast_cnn runs vote
    1-1.5 points above the better one, where the stacked ensemble of the same two does not;
    benchmarks/RESULTS.md).

    Computed once, before the first epoch, on the unaugmented faces averaged with their mirror
    image (flip is the augmentation every recipe uses, so the target does not depend on it):
    the student learns the teachers' view of the clean face whatever augmentation it is shown.
    """
    if not artifacts:
        return None
    probs = np.mean([load_teacher(a, device).predict_proba(images, tta="flip") for a in artifacts], axis=0)
    return torch.from_numpy(probs).to(device)


def fit_local(catalog: Catalog | str, architecture: str, recipe: Recipe, device: str = "auto",
              input_size: int | None = None, teacher: tuple[str, ...] = ()):
    """Train on one device, logging each epoch's line; returns (model, history, artifact metadata).
    ``teacher``: artifacts to distil from (``teacher_probs``)."""
    catalog = Catalog.open(catalog)
    dev = pick_device(device)
    input_size = input_size or catalog.image_size
    norm = Normalization(**catalog.normalization)
    torch.manual_seed(recipe.seed)
    model = build_model(architecture, NUM_CLASSES, input_size).to(dev)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train, val = (catalog.load(s) for s in ("train", "val"))
    run = Run(model, recipe, input_size, norm, to_device(train["image"], train["label"], dev),
              to_device(val["image"], val["label"], dev),
              teacher=teacher_probs(teacher, train["image"], dev))
    while not run.done:
        log.info(epoch_line(run.epoch(), recipe.epochs))
    meta = artifact_meta(architecture, input_size, catalog, norm.to_dict(), recipe,
                         parameter_counts(model), workers=0, gpu=dev.type == "cuda",
                         epochs_trained=len(run.history), teacher=teacher)
    return model, run.history, meta
