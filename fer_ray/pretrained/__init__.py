"""The model that ships inside the package, so fer-ray scores a photo with nothing but the install.

It is an ordinary artifact folder (model.json + model.safetensors + MODEL_CARD.md), trained on
FER2013 by ``fer-ray train`` itself, and loaded through the same ``Predictor`` as any other:
``score``, ``serve``, ``evaluate`` and ``predict`` fall back to it when no ``--artifact`` is given,
and take a shipped model's name as ``--artifact`` (``fer-ray models`` lists them).
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

from fer_ray.errors import FerRayError

DEFAULT_MODEL = "fer2013-fast_cnn"
log = logging.getLogger(__name__)


def default_artifact() -> Path:
    """The shipped default model's artifact folder (a real folder: the wheel is not zipped)."""
    return Path(str(files(__name__).joinpath(DEFAULT_MODEL)))


def describe_default() -> str:
    """One line naming the default model and what it earned, for commands to say which model runs."""
    from fer_ray.artifacts import read_meta

    meta = read_meta(default_artifact())
    test = (meta.get("metrics") or {}).get("test") or {}
    figure = f", FER2013 PublicTest accuracy {test['accuracy']:.1%}" if "accuracy" in test else ""
    return f"the default model {DEFAULT_MODEL} ({meta['architecture']}{figure}; see its MODEL_CARD.md)"


def shipped_models() -> dict[str, Path]:
    """The models that ship with fer-ray, by name: each an artifact folder beside this module."""
    root = Path(str(files(__name__)))
    return {folder.name: folder for folder in sorted(root.iterdir()) if (folder / "model.json").is_file()}


def shipped_or_path(artifact: str) -> str:
    """``artifact`` as given, or, where no file or folder has that path, the folder of the shipped
    model of that name (a folder of one's own called like a shipped model is what it names)."""
    if Path(artifact).exists():
        return artifact
    shipped = shipped_models()
    if artifact not in shipped:
        raise FerRayError(f"artifact {artifact} not found: neither a folder nor the name of a model that ships with "
                          f"fer-ray ({', '.join(shipped)}; `fer-ray models` lists them)")
    return str(shipped[artifact])


def artifact_or_default(artifact: str | None) -> str:
    """``artifact`` (a folder or a shipped model's name), or the default model's folder, saying so:
    a warning, which the command line writes to stderr (``predict --json`` keeps stdout for its JSON)."""
    if artifact:
        return shipped_or_path(artifact)
    log.warning(f"no --artifact given: using {describe_default()}")
    return str(default_artifact())


def model_table(crops: int = 512) -> str:
    """``fer-ray models``: each shipped model's size and PublicTest accuracy (from its model.json),
    and its speed measured now, on this machine (random 48 px crops through ``Predictor`` on the
    CPU, no test-time augmentation, after a warm-up batch)."""
    import time

    import numpy as np
    import torch

    from fer_ray.artifacts import WEIGHTS_FILE
    from fer_ray.inference.predictor import Predictor

    rows = [("model", "architecture", "parameters", "weights", "PublicTest", "with flip",
             f"crops/s here ({torch.get_num_threads()} threads)")]
    faces = np.random.default_rng(0).integers(0, 256, (crops, 48, 48), dtype=np.uint8)
    for name, folder in shipped_models().items():
        predictor = Predictor(folder, device="cpu")
        meta = predictor.meta
        metrics = meta.get("metrics") or {}
        predictor.predict_proba(faces[:64])
        start = time.perf_counter()
        predictor.predict_proba(faces)
        speed = crops / (time.perf_counter() - start)
        accuracy = [f"{metrics[key]['accuracy']:.1%}" if key in metrics else "-" for key in ("test", "test+tta-flip")]
        rows.append((name + (" (default)" if name == DEFAULT_MODEL else ""), meta.get("architecture", meta["kind"]),
                     f"{meta['parameters']['total'] / 1e6:.2f} M" if "parameters" in meta else "-",
                     f"{(folder / WEIGHTS_FILE).stat().st_size / 1e6:.1f} MB", *accuracy, f"{speed:,.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + ["", "Pick one with --artifact NAME (score, serve, evaluate, predict); "
                                   "the default runs when none is given."])
