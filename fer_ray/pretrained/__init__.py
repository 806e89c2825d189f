"""The model that ships inside the package, so fer-ray scores a photo with nothing but the install.

It is an ordinary artifact folder (model.json + model.safetensors + MODEL_CARD.md), trained on
FER2013 by ``fer-ray train`` itself, and loaded through the same ``Predictor`` as any other:
``score``, ``serve``, ``evaluate`` and ``predict`` fall back to it when no ``--artifact`` is given.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

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


def artifact_or_default(artifact: str | None) -> str:
    """``artifact`` as given, or the default model's folder, saying so: a warning, which the
    command line writes to stderr (``predict --json`` keeps stdout for its JSON)."""
    if artifact:
        return artifact
    log.warning(f"no --artifact given: using {describe_default()}")
    return str(default_artifact())
