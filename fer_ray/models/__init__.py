"""Model registry: ``build_model(name, num_classes, input_size, in_channels)``.

Architectures are built from code with random weights: nothing is ever downloaded. A local
weights file (safetensors, or a ``torch.save`` state dict loaded with ``weights_only=True``)
may be given to start from.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fer_ray.choices import MAX_INPUT_SIZE
from fer_ray.errors import FerRayError, InputNotFound
from fer_ray.models.base import FERNet
from fer_ray.models.fast import VARIANTS as FAST_CNN
from fer_ray.models.resnet import resnet50
from fer_ray.models.small import small_cnn
from fer_ray.models.vgg import vgg16, vgg16_bn

MODELS = {"vgg16": vgg16, "vgg16_bn": vgg16_bn, "resnet50": resnet50, "small_cnn": small_cnn, **FAST_CNN}


def build_model(name: str, num_classes: int = 7, input_size: int = 48, in_channels: int = 1,
                weights: str | None = None) -> FERNet:
    if name not in MODELS:
        raise FerRayError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    if input_size < 1 or in_channels < 1 or num_classes < 1:
        raise FerRayError(f"input size, channels and classes must be at least 1, got {input_size}, {in_channels}, "
                          f"{num_classes}")
    if input_size > MAX_INPUT_SIZE:  # as model.json's input_size: no artifact is trained that cannot be loaded
        raise FerRayError(f"input size {input_size} is above the largest fer-ray takes, {MAX_INPUT_SIZE} px")
    model = MODELS[name](num_classes=num_classes, input_size=input_size, in_channels=in_channels)
    if weights:
        try:
            model.load_state_dict(load_state_dict(weights))
        except RuntimeError as exc:  # names or shapes of another architecture
            detail = [line.strip() for line in str(exc).splitlines() if line.strip()][-1]
            raise FerRayError(f"weights {weights} do not fit {name} at {input_size} px ({detail[:300]})") from None
    return model


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load weights without ever unpickling code; any other file is one clear ValueError.

    The format is told by content, not name: safetensors begins with an 8-byte header length
    and a JSON ``{``; everything else goes to ``torch.load(weights_only=True)``.
    """
    p = Path(path)
    if p.is_dir():
        hint = " (an artifact: fine-tune it with --init-from)" if (p / "model.json").is_file() else ""
        raise FerRayError(f"--weights takes a weights file (.safetensors or a state dict); {p} is a folder{hint}")
    if not p.is_file():
        raise InputNotFound(f"weights file not found: {p}")
    try:
        with open(p, "rb") as fh:
            if fh.read(9)[8:9] == b"{":
                from safetensors.torch import load_file

                state = load_file(str(p))
            else:  # from the open file: given a path, torch.load picks a loader by the file's name
                fh.seek(0)
                state = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a foreign file fails in many ways; each is this file's problem
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise FerRayError(f"--weights {p} is not a safetensors file or a torch state dict "
                          f"({type(exc).__name__}: {reason})") from None
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise FerRayError(f"--weights {p} holds a {type(state).__name__}, not a state dict of tensors "
                          "(save model.state_dict(), not the model or a tensor)")
    return state


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


__all__ = ["FERNet", "MODELS", "build_model", "load_state_dict", "parameter_counts"]
