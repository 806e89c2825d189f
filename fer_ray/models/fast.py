"""fast_cnn: the family made for accuracy per CPU-minute on 48 px grey faces.

Four stages of two 3x3 conv-BN-ReLU layers (widths w, 2w, 4w, 8w), a 2x2 max-pool between
stages, global average pooling, dropout, one linear classifier. Plain dense 3x3 convolutions
were chosen by measurement (benchmarks/RESULTS.md, "fast_cnn"): on an AVX-512/AMX CPU under
bf16 autocast they train at ~700 faces/s for 235 MFLOPs a face (w=32), while a
depthwise-separable residual net (the mini-Xception kind) of 13 MFLOPs trains at ~900/s: its
depthwise layers are memory-bound and leave the matrix units idle, so it buys far less
accuracy for each CPU-second. Each stage costs about the same number of multiply-adds, so
width is the one knob that trades accuracy against time.
"""

from __future__ import annotations

from torch import nn

from fer_ray.errors import FerRayError
from fer_ray.models.base import FERNet, conv_bn_relu, init_weights

WIDTHS = {"fast_cnn_s": 24, "fast_cnn": 32, "fast_cnn_m": 40, "fast_cnn_l": 48}


def fast_cnn(num_classes: int, input_size: int = 48, in_channels: int = 1, width: int = 32,
             dropout: float = 0.3) -> FERNet:
    if input_size < 8:
        raise FerRayError(f"fast_cnn needs an input of at least 8 px (three 2x2 pools), got {input_size}")
    stages: dict[str, nn.Module] = {}
    channels = in_channels
    for i, mult in enumerate((1, 2, 4, 8), start=1):
        out = width * mult
        layers = conv_bn_relu(channels, out) + conv_bn_relu(out, out)
        if i < 4:
            layers.append(nn.MaxPool2d(2))
        stages[f"block{i}"] = nn.Sequential(*layers)
        channels = out
    stages["head"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
    model = FERNet(stages, feature_dim=channels, num_classes=num_classes)
    init_weights(model)
    return model


def _variant(name: str):
    def build(num_classes: int, input_size: int = 48, in_channels: int = 1) -> FERNet:
        return fast_cnn(num_classes, input_size, in_channels, width=WIDTHS[name])

    build.__name__ = name
    return build


VARIANTS = {name: _variant(name) for name in WIDTHS}
