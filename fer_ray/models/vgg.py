"""VGG-16 for small grey faces (the paper's first network).

Thirteen 3x3 convolutions in five groups (64, 128, 256, 512, 512), each group ending in a
2x2 max-pool, then FC 4096 -> 4096 -> classes. At 48 px the five pools leave a 1x1x512 map,
so the first FC is 512 wide, not ImageNet's 25,088. Layer widths follow torchvision's
configuration "D" (written out here: importing torchvision costs every process ~1.7 s);
``batch_norm`` gives the VGG16-BN variant that trains far more reliably.
"""

from __future__ import annotations

from torch import nn

from fer_ray.errors import FerRayError
from fer_ray.models.base import FERNet, conv_bn_relu, init_weights


# torchvision.models.vgg.cfgs["D"]: conv widths, "M" = 2x2 max-pool.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(num_classes: int, input_size: int = 48, in_channels: int = 1,
          batch_norm: bool = False, dropout: float = 0.5) -> FERNet:
    if input_size < 32:
        raise FerRayError(f"vgg16 needs an input of at least 32 px (five 2x2 pools), got {input_size}")
    stages: dict[str, nn.Module] = {}
    layers: list[nn.Module] = []
    channels, block = in_channels, 1
    for v in VGG16_LAYERS:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            stages[f"block{block}"] = nn.Sequential(*layers)
            layers, block = [], block + 1
        else:
            layers += conv_bn_relu(channels, int(v), batch_norm)
            channels = int(v)
    side = input_size // 32  # each pool floors: 48 -> 24 -> 12 -> 6 -> 3 -> 1
    stages["fc1"] = nn.Sequential(nn.Flatten(), nn.Linear(512 * side * side, 4096),
                                  nn.ReLU(inplace=True), nn.Dropout(dropout))
    stages["fc2"] = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout))
    model = FERNet(stages, feature_dim=4096, num_classes=num_classes)
    init_weights(model)
    return model


def vgg16_bn(num_classes: int, input_size: int = 48, in_channels: int = 1) -> FERNet:
    return vgg16(num_classes, input_size, in_channels, batch_norm=True)
