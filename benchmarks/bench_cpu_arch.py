"""Training speed of candidate 48 px CNN shapes on this CPU: how the fast_cnn family was chosen.

    .venv/bin/python benchmarks/bench_cpu_arch.py [--batch 128] [--steps 15] [--fp32]

For each candidate: parameters, MFLOPs per face (forward, torch's FLOP counter) and training
faces/s (forward + backward + SGD step on random 48x48 inputs, after 3 warm-up steps, torch
threads = all cores), with bf16 autocast and channels_last as fer-ray trains on CPUs
(``--fp32`` adds the fp32 figures). Candidates: plain VGG-style stages of 3x3 convolutions
(the fast_cnn family and small_cnn), a mini-Xception (depthwise-separable residual blocks)
and ResNet basic-block nets of similar widths.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fer_ray.models import build_model


def cbr(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SeparableResidual(nn.Module):
    """Mini-Xception's block: two depthwise-separable convs, a pool, a strided 1x1 shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, groups=cout, bias=False), nn.Conv2d(cout, cout, 1, bias=False),
            nn.BatchNorm2d(cout), nn.MaxPool2d(3, 2, 1))
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


def xception(widths: tuple[int, ...], stem: int) -> nn.Module:
    layers, c = cbr(1, stem) + cbr(stem, stem), stem
    for w in widths:
        layers.append(SeparableResidual(c, w))
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 7))


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if cin == cout and stride == 1 else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


def resnet(widths: tuple[int, ...], blocks: int) -> nn.Module:
    layers, c = cbr(1, widths[0]), widths[0]
    for i, w in enumerate(widths):
        for j in range(blocks):
            layers.append(Basic(c, w, 2 if j == 0 and i > 0 else 1))
            c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 7))


CANDIDATES = {
    "small_cnn": lambda: build_model("small_cnn"),
    "fast_cnn_s (w24)": lambda: build_model("fast_cnn_s"),
    "fast_cnn (w32)": lambda: build_model("fast_cnn"),
    "fast_cnn_l (w48)": lambda: build_model("fast_cnn_l"),
    "mini-Xception 16-128": lambda: xception((16, 32, 64, 128), 8),
    "mini-Xception 32-256": lambda: xception((32, 64, 128, 256), 16),
    "ResNet 32-256 x1": lambda: resnet((32, 64, 128, 256), 1),
    "ResNet 32-256 x2": lambda: resnet((32, 64, 128, 256), 2),
}


def train_rate(make, batch: int, steps: int, bf16: bool) -> tuple[int, float, float]:
    torch.manual_seed(0)
    model = make().to(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(1, 1, 48, 48))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 1, 48, 48).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    params = sum(p.numel() for p in model.parameters())
    return params, counter.get_total_flops() / 1e6, batch * steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--fp32", action="store_true", help="also time fp32")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print("\n| candidate | parameters | MFLOPs/face | train faces/s bf16 |" + (" fp32 |" if args.fp32 else ""))
    print("|---|---:|---:|---:|" + ("---:|" if args.fp32 else ""))
    for name, make in CANDIDATES.items():
        params, mflops, bf16 = train_rate(make, args.batch, args.steps, True)
        fp32 = f" {train_rate(make, args.batch, args.steps, False)[2]:,.0f} |" if args.fp32 else ""
        print(f"| {name} | {params / 1e6:.2f} M | {mflops:.0f} | {bf16:,.0f} |{fp32}", flush=True)


if __name__ == "__main__":
    main()
