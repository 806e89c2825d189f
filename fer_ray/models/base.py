"""The shape every fer-ray network shares: backbone -> penultimate features -> classifier.

Keeping the penultimate layer explicit is what the paper's ensemble needs (it concatenates
members' penultimate features) and what transfer learning needs (freeze the early stages,
train the last ones). ``stages`` lists the network's blocks in order, classifier last, so
"freeze the first N stages" means the same thing for every architecture.
"""

from __future__ import annotations

import torch
from torch import nn


class FERNet(nn.Module):
    def __init__(self, stages: dict[str, nn.Module], feature_dim: int, num_classes: int):
        super().__init__()
        self.backbone = nn.Sequential()
        for name, module in stages.items():
            self.backbone.add_module(name, module)
        self.feature_dim = feature_dim
        self.classifier = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features, shape (N, feature_dim)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))

    def stage_names(self) -> list[str]:
        return [name for name, _ in self.backbone.named_children()] + ["classifier"]

    def stage(self, name: str) -> nn.Module:
        return self.classifier if name == "classifier" else getattr(self.backbone, name)


def conv_bn_relu(cin: int, cout: int, batch_norm: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


def init_weights(model: nn.Module) -> None:
    """Kaiming init for convs, small normal for linears (torchvision's VGG/ResNet choice).

    Not on torch's meta device (a model built for its shapes, or to take loaded weights):
    there is nothing to draw, and drawing there first costs a second of torch's imports."""
    if any(p.is_meta for p in model.parameters()):
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
