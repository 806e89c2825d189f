"""ResNet50 with a one-channel stem (the paper's second network).

torchvision's ResNet50 body (bottleneck stages 3-4-6-3, 2048-d pooled features) with the
stem adapted to grey input. ImageNet's stem (7x7 stride 2 + max-pool) divides the input by 4
before the first stage: fine for the paper's ~200 px upscaled inputs, wasteful at 48 px. So
below 112 px the stem is a 3x3 stride-1 convolution without max-pool (the usual choice for
small images), which trains best on FER2013's native 48 px.
"""

from __future__ import annotations

from torch import nn

from fer_ray.models.base import FERNet

SMALL_INPUT = 112


def resnet50(num_classes: int, input_size: int = 48, in_channels: int = 1) -> FERNet:
    from torchvision.models import resnet50 as tv_resnet50  # here: torchvision takes ~1.7 s to import

    tv = tv_resnet50(weights=None)
    if input_size < SMALL_INPUT:
        conv = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        stem = nn.Sequential(conv, nn.BatchNorm2d(64), nn.ReLU(inplace=True))
    else:
        conv = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        stem = nn.Sequential(conv, tv.bn1, tv.relu, tv.maxpool)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    stages = {
        "stem": stem,
        "layer1": tv.layer1, "layer2": tv.layer2, "layer3": tv.layer3,
        "layer4": nn.Sequential(tv.layer4, nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    }
    return FERNet(stages, feature_dim=2048, num_classes=num_classes)
