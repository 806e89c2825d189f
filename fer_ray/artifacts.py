"""One artifact format for every model kind (CNN, SVM, ensemble).

An artifact is a directory::

    model.json          kind, architecture, input/image size, channels, normalisation,
                        labels, the catalog's hash, the metrics it earned, how it was made
    model.safetensors   every array the model needs (network weights, SVM coefficients,
                        ensemble head), checksummed in model.json

Loading reads JSON and safetensors only: nothing is unpickled, so an artifact from anywhere
cannot run code. An artifact is as untrusted as any other input: model.json is validated by
one schema (``MODEL_JSON``: types, sizes, finite normalisation, the seven labels), and the
arrays are checked once as loaded (checksum, float32 and finite, and a network's against the
state dict of the network model.json describes). Each problem is one ArtifactError line, raised
where a command first reads the artifact, so before Ray starts.
torch is imported only where arrays are read or written: reading the metadata (``read_meta``)
stays light for the processes that need no more than that.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import reprlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional, Union

import numpy as np
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, FiniteFloat, Tag, TypeAdapter, ValidationError,
                      field_validator)

from fer_ray.choices import MAX_INPUT_SIZE, MAX_SIDE, MODEL_NAMES
from fer_ray.emotions import EMOTIONS
from fer_ray.errors import FerRayError

if TYPE_CHECKING:  # annotations only: torch loads where arrays are read or written
    import torch

FORMAT = "fer-ray-artifact/1"
KINDS = ("cnn", "svm", "ensemble")
META_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
SHA256 = r"^[0-9a-f]{64}$"


class ArtifactError(FerRayError):
    """A directory that is not a usable fer-ray artifact."""


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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
    write_meta(out, {"format": FORMAT, "kind": kind, "labels": list(EMOTIONS),
                     "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     **meta, "weights": WEIGHTS_FILE, "weights_sha256": file_sha256(out / WEIGHTS_FILE),
                     "metrics": meta.get("metrics", {})})
    return out


def write_meta(path: str | Path, meta: dict) -> None:
    (Path(path) / META_FILE).write_text(json.dumps(meta, indent=2))


class _Normalization(BaseModel):
    """Inputs are centred by ``mean`` and divided by ``std``: a NaN, an infinity or a std <= 0
    turns every face into NaN probabilities (argmax: "angry" for all)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    mean: FiniteFloat
    std: FiniteFloat = Field(gt=0)


class _Member(BaseModel):
    """How an ensemble names a member (``ensemble.stack.member_record``)."""

    model_config = ConfigDict(extra="allow", strict=True)

    path: str = Field(min_length=1)
    weights_sha256: str = Field(pattern=SHA256)


class _Meta(BaseModel):
    """What every kind's model.json holds. Strict (no "48" for 48, no true for 1): ``read_meta``
    returns the JSON as read, so nothing may pass here only by being converted. Other fields
    (recipe, metrics' contents, how it was made) are kept as they are: they are records, not
    inputs to any loader."""

    model_config = ConfigDict(extra="allow", strict=True)

    format: Literal[FORMAT]
    labels: list[str] = list(EMOTIONS)
    # Catalog images are at most MAX_SIDE (prepare --size); an SVM's weights are sized by it.
    image_size: int = Field(ge=1, le=MAX_SIDE)
    weights: str
    weights_sha256: str = Field(pattern=SHA256)
    catalog: Optional[dict] = None  # evaluation reads and merges these two as objects
    metrics: dict = {}

    @field_validator("labels")
    @classmethod
    def _emotions(cls, labels: list[str]) -> list[str]:
        # Every kind's outputs are columns in EMOTIONS order; other labels would name them wrongly.
        if labels != list(EMOTIONS):
            raise ValueError(f"must be the seven emotions in order: {', '.join(EMOTIONS)}")
        return labels


class _CnnMeta(_Meta):
    kind: Literal["cnn"]
    architecture: Literal[MODEL_NAMES]
    # Bounds, not Literals: a Literal takes true for 1 and 7.0 for 7, which the model builder does not.
    num_classes: int = Field(ge=len(EMOTIONS), le=len(EMOTIONS))
    in_channels: int = Field(ge=1, le=1)  # grey faces
    input_size: int = Field(ge=1, le=MAX_INPUT_SIZE)  # each family's lower bound: build_model's
    normalization: _Normalization


class _SvmMeta(_Meta):
    kind: Literal["svm"]


class _EnsembleMeta(_Meta):
    kind: Literal["ensemble"]
    members: list[_Member] = Field(min_length=1)


def _kind(meta) -> str | None:
    """The kind, which chooses the schema; None (refused as such) for a value that is no object."""
    return meta.get("kind") if isinstance(meta, dict) else None


# One schema for model.json, the kind choosing the rest. A JSON value that is no object, or
# names no kind, is told only that: its other fields mean nothing without one.
MODEL_JSON = TypeAdapter(Annotated[
    Union[Annotated[_CnnMeta, Tag("cnn")], Annotated[_SvmMeta, Tag("svm")], Annotated[_EnsembleMeta, Tag("ensemble")]],
    Discriminator(_kind, custom_error_type="kind",
                  custom_error_message=f"must hold a JSON object whose 'kind' is one of {', '.join(KINDS)}")])


def read_meta(path: str | Path) -> dict:
    """model.json as a dict, validated by ``MODEL_JSON``: a hand-edited, truncated or hostile
    one is one ArtifactError naming the first bad field, here, before any loader reads it."""
    p = Path(path)
    file = p / META_FILE
    if not file.is_file():
        raise ArtifactError(f"not a fer-ray artifact (no {META_FILE}): {p}")
    try:
        meta = json.loads(file.read_bytes())
    except (ValueError, RecursionError) as exc:  # ValueError: also bytes that are no UTF-8 text
        raise ArtifactError(f"{file} is not valid JSON: {exc}") from None
    try:
        MODEL_JSON.validate_python(meta)
    except ValidationError as exc:
        raise ArtifactError(f"{file}: {_first_error(exc)}") from None
    weights_file(p, meta)
    return meta


def _first_error(exc: ValidationError) -> str:
    """The first error as one line: where, what, and the value found (shortened)."""
    error = exc.errors(include_url=False)[0]
    message = error["msg"].removeprefix("Value error, ")  # pydantic's prefix for our validators' ValueError
    where = ".".join(map(str, error["loc"][1:]))  # the first element is the kind (the union's tag)
    if not where:
        return message
    found = "" if error["type"] == "missing" else f", got {reprlib.repr(error['input'])}"
    return f"{where}: {message}{found}"


def weights_file(path: str | Path, meta: dict) -> Path:
    """The weights file model.json names, refused unless it lies inside the artifact's folder
    (links resolved): ``../../x`` or ``/etc/shadow`` would otherwise be read, and the checksum
    error would tell whether it exists. The answer does not depend on whether it does."""
    p, name = Path(path), meta["weights"]
    folder = os.path.realpath(p)
    if os.path.dirname(os.path.realpath(p / name)) != folder:  # "" and "." name the folder itself
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
        if file_sha256(weights) != meta["weights_sha256"]:
            raise ArtifactError(f"artifact {p}: {weights.name} does not match the checksum in {META_FILE}")
        arrays = load_file(str(weights))
    except (SafetensorError, OSError) as exc:  # e.g. a pickle, or a cut file, given the checksum it has
        raise ArtifactError(f"artifact {p}: {weights.name} is not a readable safetensors file ({exc})") from None
    _check_floats(p, arrays)
    return meta, arrays


def _check_floats(path: Path, arrays: dict[str, torch.Tensor]) -> None:
    """Every float array is float32 and finite, for every kind. fer-ray writes float32 only; a
    float64 network loads, then fails on every batch (float32 inputs), and one NaN or infinity
    makes every prediction NaN. One pass over the arrays: milliseconds for these models."""
    import torch

    for name, array in arrays.items():
        if array.is_floating_point() and array.dtype != torch.float32:
            raise ArtifactError(f"artifact {path}: array {name!r} is {array.dtype}; fer-ray artifacts hold float32")
        if array.is_floating_point() and not torch.isfinite(array).all():
            raise ArtifactError(f"artifact {path}: array {name!r} holds NaN or infinite values")


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
        try:
            model = build_model(*shape)
        except FerRayError as exc:  # e.g. an input size below what the architecture pools down
            raise ArtifactError(f"{path}: {exc}") from None
    # Shapes and dtypes both: load_state_dict(assign=True) takes the weights' own dtype, so an
    # integer weight (or a float num_batches_tracked) would load and then fail on every batch.
    wanted = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    found = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    if wanted != found:
        differ = sorted(k for k in wanted.keys() & found.keys() if wanted[k] != found[k])
        odd = sorted(wanted.keys() ^ found.keys())
        if differ:
            k = differ[0]
            (got, got_dtype), (want, want_dtype) = found[k], wanted[k]
            detail = (f"size mismatch for {k}: the weights hold {got}, {META_FILE} implies {want}" if got != want
                      else f"dtype mismatch for {k}: the weights hold {got_dtype}, the network takes {want_dtype}")
        else:
            detail = f"{len(odd)} tensors named in one and not the other, e.g. {odd[0]}"
        raise ArtifactError(f"{path}: the weights do not fit the {meta['architecture']} described in "
                            f"{META_FILE} ({detail})")
    model.load_state_dict(state, assign=True)
    return model.to(device).eval(), meta
