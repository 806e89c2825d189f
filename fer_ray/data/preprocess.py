"""Decode, validate, grey and resize images: the one place pixels enter fer-ray.

Training data (``prepare``) and scoring/serving inputs go through the same functions, so an
image is never preprocessed one way for training and another way for prediction.
"""

from __future__ import annotations

import io
import threading
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from fer_ray.errors import FerRayError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Read by fer_ray.data.video; named here beside the images', so that telling them apart needs no
# video decoder loaded (predict on photos never imports one).
VIDEO_EXTENSIONS = (".avi", ".m4v", ".mkv", ".mov", ".mp4", ".webm")
ACCEPTED_FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "TIFF", "MPO"}
DEFAULT_MAX_PIXELS = 40_000_000  # ~ a 40 MP photo; bigger is a decompression bomb here

# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_ORIENTATION_TAG = 0x0112
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
# ``warnings.catch_warnings`` swaps process-wide state: two threads (the Serve replica decodes
# in a thread pool) entering and leaving it out of order can leave every warning an error.
_WARNINGS_LOCK = threading.Lock()


class ImageError(FerRayError):
    """One image that cannot be used. The message is the reason recorded for it."""


class UnsupportedFormat(ImageError):
    """An image in a format fer-ray does not take (HTTP 415)."""


class TooManyPixels(ImageError):
    """An image above the pixel limit (HTTP 413)."""


def has_image_extension(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def has_video_extension(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


def decode_grey(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to a uint8 grey array (H, W), or raise ImageError saying why.

    Checks, in order: empty input, a recognisable image header, an accepted format, the
    pixel limit (read from the header, before any pixel is decoded, so a decompression bomb
    costs nothing), a single frame, then a full decode that catches truncated and corrupt
    files. Pillow's parsers meet hostile bytes with many kinds of exception (struct.error,
    TypeError, ...): every one of them is this image's problem, so every one becomes an
    ImageError.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            # Pillow's own guard (``Image.MAX_IMAGE_PIXELS``, the caller's process-wide setting,
            # left as it is) warns before ``max_pixels`` is checked below: the limit here is ours.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # above twice Pillow's limit: refused all the same
        raise TooManyPixels(f"image too large: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError("not a decodable image (unrecognised content)") from None
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise ImageError(f"not a decodable image ({type(exc).__name__}: {exc})") from None
    if img.format not in ACCEPTED_FORMATS:
        raise UnsupportedFormat(f"unsupported image format {img.format}")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise TooManyPixels(
            f"image too large: {width}x{height} = {width * height} pixels > limit {max_pixels}"
        )
    try:
        # Animated WebP/PNG and multi-page TIFF: decoding would silently keep frame 1 of many.
        # (A camera's MPO is one photo plus previews: its first frame is the photo.)
        frames = 1 if img.format == "MPO" else getattr(img, "n_frames", 1)
        if frames > 1:
            raise ImageError(f"{frames}-frame image (animated or multi-page {img.format}); "
                             "save the frame to use as an image of its own")
        _load_strictly(img)
        img = _upright(img)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise ImageError(f"truncated or corrupt image ({type(exc).__name__}: {exc})") from None
    return to_grey(img)


def _load_strictly(img: Image.Image) -> None:
    """Decode every pixel; a warning while decoding (how Pillow reports some truncated or
    corrupt files) fails the image. Warnings are recorded rather than turned into errors, so
    another thread that warns during these few milliseconds gets no exception."""
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img.load()
    if caught:
        raise ImageError(f"truncated or corrupt image ({caught[0].message})")


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation. ``ImageOps.exif_transpose`` would also rewrite the EXIF
    block, which fails on some valid files with odd tags; only the pixels matter here."""
    try:
        orientation = img.getexif().get(_ORIENTATION_TAG)
    except Exception as exc:  # noqa: BLE001 - unreadable EXIF: the image is refused, saying so
        raise ImageError(f"unreadable EXIF metadata ({type(exc).__name__}: {exc})") from None
    return img.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else img


def to_grey(img: Image.Image) -> np.ndarray:
    """Convert any Pillow image to uint8 grey with ITU-R 601 luminance weights.

    Pillow's "L" conversion is L = 0.299 R + 0.587 G + 0.114 B, the weights the paper (and
    MATLAB's rgb2gray) use for KDEF's colour photos. Transparent pixels are composited on
    white. 16-bit images keep their brightness: 0..65535 maps to 0..255 as the same photo
    saved with 8 bits would be (a white 16-bit face is white, not stretched per image). Float
    images on 0..1 map to 0..255; other ranges (and 32-bit integers beyond 16 bits) have no
    known white, so they are stretched from their minimum to their maximum. A float image
    with NaN or infinite pixels has no scale at all and is an ImageError.
    """
    if img.mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:  # NaN would make the whole scaled image NaN, i.e. black, and still be "scored"
            raise ImageError(f"float image with {bad} non-finite pixel(s) (NaN or infinity)")
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode != "F" and 0 <= lo and hi <= 65535:
            scaled = arr / 257.0  # 65535 / 257 = 255
        elif img.mode == "F" and 0 <= lo and hi <= 1:
            scaled = arr * 255.0
        else:
            scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return np.round(scaled).astype(np.uint8)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB").convert("L"), dtype=np.uint8)


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """Luminance grey of an (H, W, 3) uint8 array, identical to Pillow's "L" conversion."""
    return np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint8)


def resize(grey: np.ndarray, size: int) -> np.ndarray:
    """Resize a grey image to size x size (antialiased), cropping the central square first so
    that resizing never distorts a face's proportions."""
    h, w = grey.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    grey = grey[top : top + side, left : left + side]
    if grey.shape == (size, size):
        return grey
    return np.asarray(
        Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR),
        dtype=np.uint8,
    )


def resize_faces(faces, size: int) -> np.ndarray:
    """Grey uint8 faces (a list of (H, W) arrays, or one (N, H, W) array) -> (N, size, size), the
    faces a model takes; anything else is a one-line FerRayError."""
    if isinstance(faces, np.ndarray):
        if faces.ndim != 3 or faces.dtype != np.uint8:  # a 0..1 float array would become black faces
            raise FerRayError(f"expected grey uint8 faces (N, H, W), got {faces.dtype} {faces.shape}")
        if faces.shape[2] in (3, 4) and faces.shape[1] > 4:  # rows of one colour image, not N faces
            raise FerRayError(f"expected grey faces (N, H, W), got {faces.shape}: that looks like one "
                              "colour image (H, W, channels); convert it to grey first")
        if faces.shape[1:] == (size,) * 2:
            return np.ascontiguousarray(faces)  # a mirrored view (negative strides) is copied
    out = np.empty((len(faces), size, size), dtype=np.uint8)
    for i, face in enumerate(faces):
        face = np.asarray(face)
        if face.ndim != 2 or face.dtype != np.uint8:
            raise FerRayError(f"face {i}: expected a grey uint8 (H, W) array, got {face.dtype} {face.shape}")
        if face.size == 0:
            raise FerRayError(f"face {i}: empty image {face.shape}")
        out[i] = resize(face, size)
    return out


def encode_png(grey: np.ndarray) -> bytes:
    """Encode a grey uint8 array as PNG bytes (used to write test images and demo inputs)."""
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    return buf.getvalue()
