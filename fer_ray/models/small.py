"""A small CNN for CPU demos and tests: four conv groups (16, 32, 64, 128), global pooling.

About 0.15 M parameters and ~25 M multiply-adds per 48 px face, so two CPUs train it at
roughly a thousand faces a second: a few thousand synthetic faces learn in a minute or two.
"""

from __future__ import annotations

from torch import nn

from fer_ray.errors import FerRayError
from fer_ray.models.base import FERNet, conv_bn_relu, init_weights


def small_cnn(num_classes: int, input_size: int = 48, in_channels: int = 1, width: int = 16) -> FERNet:
    if input_size < 8:
        raise FerRayError(f"small_cnn needs an input of at least 8 px (three 2x2 pools), got {input_size}")
    stages: dict[str, nn.Module] = {}
    channels = in_channels
    for i, (mult, convs) in enumerate(((1, 1), (2, 2), (4, 2), (8, 1)), start=1):
        out = width * mult
        layers = conv_bn_relu(channels, out)
        for _ in range(convs - 1):
            layers += conv_bn_relu(out, out)
        if i < 4:
            layers.append(nn.MaxPool2d(2))
        stages[f"block{i}"] = nn.Sequential(*layers)
        channels = out
    stages["head"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2))
    model = FERNet(stages, feature_dim=channels, num_classes=num_classes)
    init_weights(model)
    return model
