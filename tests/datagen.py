"""Writers of small test inputs in every layout fer-ray reads: FER2013 CSV lines, image-folder
trees, KDEF photo trees, and the classic bad files (truncated JPEG, decompression-bomb PNG).

Everything is generated from the seeded synthetic faces, so tests never need real data and
know exactly what each file contains.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fer_ray.data.synthetic import synthetic_faces
from fer_ray.emotions import EMOTIONS, KDEF_CODES

KDEF_SIZE = (562, 762)  # width, height of a KDEF photo
KDEF_EXPRESSIONS = tuple(KDEF_CODES)  # AF AN DI HA NE SA SU


# ---------------------------------------------------------------- FER2013 CSV


def fer_line(label, pixels, usage="Training") -> str:
    """One ``emotion,pixels,Usage`` line; ``pixels`` an array (flattened) or a raw string."""
    if not isinstance(pixels, str):
        pixels = " ".join(str(int(v)) for v in np.asarray(pixels).ravel())
    return f"{label},{pixels},{usage}"


def write_fer_csv(path: Path, lines: list[str], header: str = "emotion,pixels,Usage") -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def face_pixels(count: int, seed: int = 0, start: int = 0) -> np.ndarray:
    """``count`` 48x48 synthetic faces (labels cycling 0..6), uint8 (N, 48, 48)."""
    return synthetic_faces(np.arange(start, start + count) % 7, 48, seed, start)


# ---------------------------------------------------------------- running a source


def run_source(source, batch_size: int = 3) -> dict[str, np.ndarray]:
    """plan() + read_batch() over batches of work items, concatenated (what Ray Data does)."""
    items = source.plan()
    parts = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        parts.append(source.read_batch({k: np.array([it[k] for it in chunk]) for k in chunk[0]}))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def by_id(rows) -> dict[str, dict]:
    keys = [k for k in rows if k != "image"]
    return {rows["id"][i]: {**{k: rows[k][i] for k in keys}, "image": rows["image"][i]}
            for i in range(len(rows["id"]))}


# ---------------------------------------------------------------- image files


def encode(arr: np.ndarray, fmt: str = "PNG", quality: int = 92) -> bytes:
    buf = io.BytesIO()
    kwargs = {"quality": quality} if fmt == "JPEG" else {}
    Image.fromarray(arr).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def write_image(path: Path, arr: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}.get(
        path.suffix.lower(), "PNG")
    path.write_bytes(encode(arr, fmt))
    return path


def truncated_jpeg(arr: np.ndarray) -> bytes:
    """A JPEG cut after its headers and part of the scan: opens, fails to decode."""
    data = encode(arr, "JPEG")
    return data[: len(data) * 2 // 3]


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming ``width`` x ``height`` (a decompression bomb's
    header): any reader that trusts it and allocates the pixels is in trouble."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    idat = zlib.compress(b"\x00" * 64)  # a token of data, nowhere near enough
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bad_files(face: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected reason prefix)"""
    gif = encode(face, "GIF")
    return {
        "zero.jpg": (b"", "empty file"),
        "truncated.jpg": (truncated_jpeg(np.asarray(Image.fromarray(face).resize((480, 480)))),
                          "truncated or corrupt image"),
        "garbage.png": (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
                        "not a decodable image"),
        "text.jpg": (b"this is a text file, not a JPEG\n" * 20, "not a decodable image"),
        "bomb.png": (png_header_only(100_000, 100_000), "image too large"),
        "anim.jpg": (gif, "unsupported image format GIF"),
    }


def write_folder_tree(root: Path, counts: dict[str, dict[str, int]], seed: int = 0,
                      ext: str = ".png") -> dict[str, np.ndarray]:
    """``<root>/<split>/<emotion>/<n>.png`` with synthetic faces.

    ``counts`` maps split folder -> emotion folder name -> number of images. Returns the
    written pixels by id (``split/emotion/file``), the ids a catalog will carry.
    """
    written, index = {}, 0
    for split, per_emotion in counts.items():
        for emotion, n in per_emotion.items():
            label = EMOTIONS.index(emotion) if emotion in EMOTIONS else 0
            faces = synthetic_faces(np.full(n, label), 48, seed, index)
            for i, face in enumerate(faces):
                rel = f"{split}/{emotion}/{index + i:05d}{ext}"
                write_image(root / rel, face)
                written[rel] = face
            index += n
    return written


# ---------------------------------------------------------------- KDEF


@dataclass(frozen=True)
class KdefFile:
    path: Path
    id: str
    label: int
    subject: str  # sex + number, e.g. F01
    angle: str
    rgb: np.ndarray  # the pixels as written (before JPEG)


def kdef_name(session: str, sex: str, num: int, code: str, angle: str) -> str:
    return f"{session}{sex}{num:02d}{code}{angle}.JPG"


def kdef_photo(face: np.ndarray | None, colour=(40, 90, 160), tint=(1.0, 0.85, 0.7),
               at: tuple[int, int] | None = None) -> np.ndarray:
    """A 562x762 colour photo: a flat coloured background with a tinted grey face pasted at
    ``at`` (top-left x, y; default centred). ``face=None`` gives a photo with no face."""
    w, h = KDEF_SIZE
    photo = np.empty((h, w, 3), np.uint8)
    photo[:] = colour
    if face is not None:
        side = face.shape[0]
        x, y = at if at is not None else ((w - side) // 2, (h - side) // 2)
        photo[y : y + side, x : x + side] = np.clip(
            face[:, :, None].astype(np.float64) * np.array(tint), 0, 255).astype(np.uint8)
    return photo


def write_kdef(root: Path, subjects=(("F", 1), ("M", 1)), sessions=("A",),
               codes=KDEF_EXPRESSIONS, angles=("S",), face_side: int = 96,
               seed: int = 0) -> list[KdefFile]:
    """Write ``root/KDEF/<session><sex><nn>/<...>.JPG`` photos and return what was written.

    Real KDEF nests photos in one folder per session and subject (``AF01/AF01AFS.JPG``);
    the face shows the file's expression, so labels can be checked against pixels.
    """
    files, index = [], 0
    for session in sessions:
        for sex, num in subjects:
            folder = root / "KDEF" / f"{session}{sex}{num:02d}"
            for code in codes:
                label = EMOTIONS.index(KDEF_CODES[code])
                for angle in angles:
                    face = synthetic_faces(np.array([label]), face_side, seed, index)[0]
                    index += 1
                    rgb = kdef_photo(face, colour=(30 + 5 * num, 90, 160))
                    name = kdef_name(session, sex, num, code, angle)
                    path = write_image(folder / name, rgb, "JPEG")
                    files.append(KdefFile(path, str(path.relative_to(root)), label,
                                          f"{sex}{num:02d}", angle, rgb))
    return files


# ---------------------------------------------------------------- artifacts


def untrained_artifact(path: Path) -> Path:
    """A small_cnn artifact with its initial weights: for what needs a model, not a good one."""
    from fer_ray.artifacts import save_cnn
    from fer_ray.models import build_model

    return save_cnn(str(path), build_model("small_cnn"), {
        "architecture": "small_cnn", "num_classes": 7, "input_size": 48, "image_size": 48, "in_channels": 1,
        "normalization": {"mean": 0.5, "std": 0.25}})


def pickled_weights_artifact(path: Path) -> Path:
    """An untrained small_cnn artifact whose weights file is a pickle, its checksum updated to
    match: only the safetensors reader stands between it and running code."""
    import json
    import pickle

    from fer_ray.artifacts import file_sha256

    untrained_artifact(path)
    (path / "model.safetensors").write_bytes(pickle.dumps({"weights": list(range(10))}))
    meta = json.loads((path / "model.json").read_text())
    meta["weights_sha256"] = file_sha256(path / "model.safetensors")
    (path / "model.json").write_text(json.dumps(meta))
    return path


def listed(input) -> tuple[list[str], int]:
    """What ``fer-ray score`` lists for ``input``: its images' and videos' absolute paths in
    listing order, and how many other files it skips."""
    from fer_ray.inference.blocks import classified

    found = list(classified(str(input)))
    return [name for kind, name in found if kind], sum(kind is None for kind, _ in found)
