"""One artifact format for every model kind (CNN, SVM, ensemble).

An artifact is a directory::

    model.json          kind, architecture, input/image size, channels, normalisation,
                        labels, the catalog's hash, the metrics it earned, how it was made
    model.safetensors   every array the model needs (network weights, SVM coefficients,
                        ensemble head), checksummed in model.json

Loading reads JSON and safetensors only: nothing is unpickled, so an artifact from anywhere
cannot run code. A checksum mismatch (a truncated copy, a swapped file) is refused, and so is
a model.json that names a file outside its folder or sizes its weights do not bear out: an
artifact is as untrusted as any other input.
torch is imported only where arrays are read or written: reading the metadata (``read_meta``)
stays light for the processes that need no more than that.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fer_ray.choices import MAX_SIDE
from fer_ray.emotions import EMOTIONS
from fer_ray.errors import FerRayError

if TYPE_CHECKING:  # annotations only: torch loads where arrays are read or written
    import torch

FORMAT = "fer-ray-artifact/1"
KINDS = ("cnn", "svm", "ensemble")
META_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"


class ArtifactError(FerRayError):
    """A directory that is not a usable fer-ray artifact."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_artifact(path: str, kind: str, arrays: dict, meta: dict) -> Path:
    """Write ``arrays`` (tensors or numpy) and ``meta`` as an artifact directory."""
    if kind not in KINDS:
        raise ArtifactError(f"unknown artifact kind {kind!r}; expected one of {KINDS}")
    import torch
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
               .detach().cpu().contiguous().clone() for k, v in arrays.items()}
    save_file(tensors, str(out / WEIGHTS_FILE))
    full = {"format": FORMAT, "kind": kind, "labels": list(EMOTIONS),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **meta, "weights": WEIGHTS_FILE, "weights_sha256": file_sha256(out / WEIGHTS_FILE)}
    full.setdefault("metrics", {})
    write_meta(out, full)
    return out


def write_meta(path: str | Path, meta: dict) -> None:
    (Path(path) / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=False))


def read_meta(path: str | Path) -> dict:
    p = Path(path)
    if not (p / META_FILE).is_file():
        raise ArtifactError(f"not a fer-ray artifact (no {META_FILE}): {p}")
    try:
        meta = json.loads((p / META_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{p / META_FILE} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{p / META_FILE} must hold a JSON object, not {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{p} has format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("kind") not in KINDS:
        raise ArtifactError(f"{p} has unknown kind {meta.get('kind')!r}")
    _check_fields(p, meta)
    return meta


# The fields each kind's loader reads, and their JSON types: a hand-edited or truncated
# model.json is refused here, by name, instead of failing later with a KeyError.
_FIELDS = {"image_size": int}
_TYPE_NAMES = {int: "positive integer", str: "string", dict: "JSON object", list: "JSON list"}
_KIND_FIELDS = {
    "cnn": {"architecture": str, "num_classes": int, "input_size": int, "in_channels": int, "normalization": dict},
    "svm": {},
    "ensemble": {"members": list},
}


# Sizes the code around a model fixes: seven emotions out, grey faces in, and no side above
# MAX_SIDE (memory grows with its square in every batch; a model.json is not to decide that).
_SIZE_LIMITS = {"image_size": (1, MAX_SIDE), "input_size": (1, MAX_SIDE), "num_classes": (len(EMOTIONS),) * 2,
                "in_channels": (1, 1)}


def _check_fields(p: Path, meta: dict) -> None:
    for key, kind in (_FIELDS | _KIND_FIELDS[meta["kind"]]).items():
        value = meta.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1):
            raise ArtifactError(f"{p / META_FILE}: {key!r} must be a {_TYPE_NAMES[kind]}, got {value!r}")
        low, high = _SIZE_LIMITS.get(key, (1, float("inf")))
        if kind is int and not low <= value <= high:
            raise ArtifactError(f"{p / META_FILE}: {key!r} must be {low if low == high else f'{low}..{high}'}, "
                                f"got {value!r}")
    weights_file(p, meta)
    norm = meta.get("normalization")
    if meta["kind"] == "cnn" and not (set(norm) == {"mean", "std"} and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in norm.values())):
        raise ArtifactError(f"{p / META_FILE}: 'normalization' must be {{\"mean\": number, \"std\": number}}, "
                            f"got {norm!r}")
    if meta["kind"] == "cnn" and not 0 < norm["std"] < float("inf"):  # inputs are divided by it
        raise ArtifactError(f"{p / META_FILE}: 'normalization' std must be a positive number, got {norm['std']!r}")
    for key in ("catalog", "metrics"):  # optional, but evaluation reads and merges them as objects
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise ArtifactError(f"{p / META_FILE}: {key!r} must be a JSON object, got {meta[key]!r}")


def weights_file(path: str | Path, meta: dict) -> Path:
    """The weights file model.json names, refused unless it lies inside the artifact's folder
    (links resolved): ``../../x`` or ``/etc/shadow`` would otherwise be read, and the checksum
    error would tell whether it exists. The answer does not depend on whether it does."""
    p, name = Path(path), meta.get("weights", WEIGHTS_FILE)
    folder = os.path.realpath(p)
    target = os.path.realpath(p / name) if isinstance(name, str) and name else folder
    if os.path.dirname(target) != folder:
        raise ArtifactError(f"{p / META_FILE}: 'weights' must name a file in the artifact's own folder, "
                            f"got {name!r}")
    return p / name


def load_artifact(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Return (metadata, arrays) after checking the weights' checksum."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    meta = read_meta(p)
    weights = weights_file(p, meta)
    if not weights.is_file():
        raise ArtifactError(f"artifact {p} is missing its weights file {weights.name}")
    try:
        if file_sha256(weights) != meta.get("weights_sha256"):
            raise ArtifactError(f"artifact {p}: {weights.name} does not match the checksum in {META_FILE}")
        return meta, load_file(str(weights))
    except (SafetensorError, OSError) as exc:  # e.g. a pickle, or a cut file, given the checksum it has
        raise ArtifactError(f"artifact {p}: {weights.name} is not a readable safetensors file ({exc})") from None


def linear_arrays(path, arrays: dict, names: tuple[str, str, str, str], width: int | None = None) -> list[np.ndarray]:
    """A linear model's (coef, intercept, centre, scale) as float32, checked against each other.

    SVM and ensemble-head artifacts store these four arrays: coef (7, D), intercept (7,), the
    input centre (D,) and scale (D,) or (1,). An artifact whose arrays are not these (a
    model.json whose ``kind`` was edited, weights from another model) is refused by name here
    instead of a KeyError or a broadcasting error on the first prediction. ``width``: the D the
    inputs will have, when known.
    """
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ArtifactError(f"artifact {path}: its weights lack {', '.join(missing)} (a {'/'.join(names)} "
                            "linear model is expected); is model.json's 'kind' right?")
    coef, intercept, centre, scale = (np.asarray(arrays[n], np.float32) for n in names)
    d = coef.shape[1] if coef.ndim == 2 else -1
    if (coef.shape[0] != len(EMOTIONS) or d < 1 or intercept.shape != (len(EMOTIONS),) or centre.shape != (d,)
            or scale.shape not in ((d,), (1,)) or (width is not None and d != width)):
        shapes = ", ".join(f"{n} {tuple(np.shape(arrays[n]))}" for n in names)
        raise ArtifactError(f"artifact {path}: array shapes {shapes} do not make a {len(EMOTIONS)}-class linear "
                            f"model{f' on {width} inputs' if width is not None else ''}")
    return [coef, intercept, centre, scale]


def update_metrics(path: str | Path, metrics: dict) -> dict:
    """Merge ``metrics`` into the artifact's recorded metrics (keyed by split/protocol)."""
    meta = read_meta(path)
    meta["metrics"] = {**meta.get("metrics", {}), **metrics}
    write_meta(path, meta)
    return meta


def save_cnn(path: str, model: torch.nn.Module, meta: dict) -> Path:
    """Save a FERNet's state dict (unwrapped from DDP if needed) as a CNN artifact."""
    model = getattr(model, "module", model)
    return save_artifact(path, "cnn", dict(model.state_dict()), meta)


def load_cnn(path: str | Path, device: torch.device | str = "cpu"):
    """Rebuild a CNN artifact's network; returns (model in eval mode, metadata)."""
    from fer_ray.models import build_model

    import torch

    meta, state = load_artifact(path)
    if meta["kind"] != "cnn":
        raise ArtifactError(f"{path} is a {meta['kind']} artifact, not a CNN")
    shape = (meta["architecture"], meta["num_classes"], meta["input_size"], meta["in_channels"])
    # Built without memory (torch's meta device), compared with the weights, then given them: a
    # vgg16 whose model.json claims a larger input than its weights were trained at would
    # otherwise allocate a first layer of the claimed size (100,000 px: hundreds of GB) before
    # failing, and no weights are drawn at random only to be replaced.
    with torch.device("meta"):
        model = build_model(*shape)
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if wanted != found:
        resized = sorted(k for k in wanted.keys() & found.keys() if wanted[k] != found[k])
        odd = sorted(wanted.keys() ^ found.keys())
        detail = (f"size mismatch for {resized[0]}: the weights hold {found[resized[0]]}, {META_FILE} implies "
                  f"{wanted[resized[0]]}" if resized else f"{len(odd)} tensors named in one and not the other, "
                  f"e.g. {odd[0]}")
        raise ArtifactError(f"{path}: the weights do not fit the {meta['architecture']} described in "
                            f"{META_FILE} ({detail})")
    model.load_state_dict(state, assign=True)
    return model.to(device).eval(), meta
