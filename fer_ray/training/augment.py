"""Batched, device-side augmentation: horizontal flip, small affine, random erasing, photo degradation.

Everything is one tensor op over the whole batch on the batch's device: no per-image Python,
no CPU round trip. On a GPU that keeps augmentation off the critical path at ~50k img/s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fer_ray.training.config import Augment


def augment_batch(x: torch.Tensor, aug: Augment, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a normalised float batch (N, C, H, W); returns a new tensor."""
    n, dev = x.shape[0], x.device

    def rand(*shape):
        return torch.rand(*shape, device=dev, generator=generator)

    if aug.flip:
        flip = rand(n) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if aug.rotate_deg > 0 or aug.scale > 0 or aug.translate_px > 0:
        angle = (rand(n) * 2 - 1) * math.radians(aug.rotate_deg)
        scale = 1 + (rand(n) * 2 - 1) * aug.scale
        shift = (rand(n, 2) * 2 - 1) * (aug.translate_px / 48.0) * 2  # in [-1, 1] grid units
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                             torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if aug.photo_p > 0:
        x = _photo_degrade(x, rand(n) < aug.photo_p, rand, generator)
    if aug.erase_p > 0:
        x = _random_erase(x, aug, rand)
    return x


# A face cut from a photo differs from a FER2013 crop the way bench_photos.py's faces do: it may
# have been smaller than 48 px (its detail lost when the crop is enlarged back), soft (focus,
# JPEG), lit otherwise, and noisy. The ranges are in normalised units, where one unit is about one
# standard deviation of the training pixels (0.25 of the 0-1 range).
SHRUNK_SIDES = (24, 32, 40)  # a face of 24-40 px, enlarged back to the crop's side
BLUR_SIGMA = 1.0  # at most, in pixels of the crop
CONTRAST = 0.35  # a factor in [1 - C, 1 + C]
BRIGHTNESS = 0.5
NOISE = 0.12  # at most, the noise's standard deviation


def _photo_degrade(x, chosen, rand, generator):
    """Degrade the ``chosen`` images of the batch: each step applies to half of them, drawn apart."""
    n, c, h, w = x.shape
    shrink = (rand(n) * 2 * len(SHRUNK_SIDES)).long()  # half of them keep their size
    for i, side in enumerate(SHRUNK_SIDES):  # one resize per side: a few batched calls
        idx = torch.nonzero(chosen & (shrink == i)).flatten()
        if len(idx) and side < h:
            small = F.interpolate(x[idx], size=(side, side * w // h), mode="bilinear", antialias=True)
            x = x.index_copy(0, idx, F.interpolate(small, size=(h, w), mode="bilinear"))
    sigma = torch.where(chosen & (rand(n) < 0.5), rand(n) * BLUR_SIGMA, torch.zeros(n, device=x.device))
    x = gaussian_blur(x, sigma)
    relit = (chosen & (rand(n) < 0.5))[:, None, None, None]
    contrast = (1 + (rand(n) * 2 - 1) * CONTRAST)[:, None, None, None]
    brightness = ((rand(n) * 2 - 1) * BRIGHTNESS)[:, None, None, None]
    x = torch.where(relit, x * contrast + brightness, x)
    noisy = (chosen & (rand(n) < 0.5))[:, None, None, None]
    noise = torch.randn(x.shape, device=x.device, generator=generator) * (rand(n) * NOISE)[:, None, None, None]
    return torch.where(noisy, x + noise, x)


def gaussian_blur(x, sigma):
    """Blur each image by its own sigma (0 = unchanged) in one grouped convolution."""
    n, c, h, w = x.shape
    radius = math.ceil(3 * BLUR_SIGMA)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(t[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None].to(x.dtype) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (n, k): sigma 0 leaves only the centre tap
    kernel = kernel.repeat_interleave(c, 0)
    flat = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


def _random_erase(x, aug, rand):
    """Zero (= the mean, after normalisation) one random rectangle in a fraction of images."""
    n, _, h, w = x.shape
    area = aug.erase_area[0] + rand(n) * (aug.erase_area[1] - aug.erase_area[0])
    aspect = torch.exp((rand(n) * 2 - 1) * math.log(3.0))
    eh = (torch.sqrt(area * aspect) * h).clamp(1, h)
    ew = (torch.sqrt(area / aspect) * w).clamp(1, w)
    top = rand(n) * (h - eh)
    left = rand(n) * (w - ew)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    box = ((ys >= top[:, None, None]) & (ys < (top + eh)[:, None, None]) &
           (xs >= left[:, None, None]) & (xs < (left + ew)[:, None, None]))
    apply = (rand(n) < aug.erase_p)[:, None, None]
    return x.masked_fill((box & apply)[:, None], 0.0)
