"""Decode, validate, grey and resize images: the one place pixels enter fer-ray.

Training data (``prepare``) and scoring/serving inputs go through the same functions, so an
image is never preprocessed one way for training and another way for prediction.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
ACCEPTED_FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "TIFF", "MPO"}
DEFAULT_MAX_PIXELS = 40_000_000  # ~ a 40 MP photo; bigger is a decompression bomb here

# Our own limit replaces Pillow's warning-based one, so both are not fighting.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """One image that cannot be used. The message is the reason recorded for it."""


def has_image_extension(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def decode_grey(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to a uint8 grey array (H, W), or raise ImageError saying why.

    Checks, in order: empty input, a recognisable image header, an accepted format, the
    pixel limit (read from the header, before any pixel is decoded, so a decompression bomb
    costs nothing), then a full decode that catches truncated and corrupt files.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not a decodable image (unrecognised content)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"not a decodable image ({exc})") from None
    if img.format not in ACCEPTED_FORMATS:
        raise ImageError(f"unsupported image format {img.format}")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} = {width * height} pixels > limit {max_pixels}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow warns on some truncated/corrupt files
            img.load()
            img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, Warning, Image.DecompressionBombError) as exc:
        raise ImageError(f"truncated or corrupt image ({exc})") from None
    return to_grey(img)


def to_grey(img: Image.Image) -> np.ndarray:
    """Convert any Pillow image to uint8 grey with ITU-R 601 luminance weights.

    Pillow's "L" conversion is L = 0.299 R + 0.587 G + 0.114 B, the weights the paper (and
    MATLAB's rgb2gray) use for KDEF's colour photos. Transparent pixels are composited on
    white, and 16-bit/float images are rescaled to 0..255 rather than clipped.
    """
    if img.mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
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


def center_square(grey: np.ndarray) -> np.ndarray:
    """Crop the central square, so resizing never distorts a face's proportions."""
    h, w = grey.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return grey[top : top + side, left : left + side]


def resize(grey: np.ndarray, size: int) -> np.ndarray:
    """Resize a grey image to size x size (antialiased), cropping to a square first."""
    grey = center_square(grey)
    if grey.shape == (size, size):
        return grey
    return np.asarray(
        Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR),
        dtype=np.uint8,
    )


def encode_png(grey: np.ndarray) -> bytes:
    """Encode a grey uint8 array as PNG bytes (used to write test images and demo inputs)."""
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    return buf.getvalue()
