"""Transfer learning: start from a trained artifact, freeze its early stages, fine-tune the rest.

The paper moved its FER2013 networks to KDEF by freezing all but the last layers. Stages are
the network's blocks in order (``FERNet.stage_names()``, classifier last), so ``freeze=N``
freezes the first N stages and ``freeze=-K`` freezes all but the last K.
"""

from __future__ import annotations

from torch import nn

from fer_ray.errors import FerRayError
from fer_ray.models.base import FERNet


def resolve_freeze(model: FERNet, freeze: int) -> int:
    """Number of leading stages to freeze; rejects freezing nothing-trainable-left."""
    n_stages = len(model.stage_names())
    n = freeze if freeze >= 0 else n_stages + freeze
    if not 0 <= n < n_stages or freeze <= -n_stages:  # -n_stages would be a second spelling of 0
        raise FerRayError(
            f"--freeze {freeze} is out of range for {n_stages} stages {model.stage_names()}: "
            f"use 0..{n_stages - 1}, or -1..-{n_stages - 1} for 'all but the last K'")
    return n


def freeze_stages(model: FERNet, freeze: int) -> tuple[nn.Module, ...]:
    """Stop gradients in the first stages; return the frozen modules (to keep in eval mode)."""
    names = model.stage_names()[: resolve_freeze(model, freeze)]
    frozen = tuple(model.stage(name) for name in names)
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    return frozen
