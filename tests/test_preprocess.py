"""decode_grey on awkward but valid files, hostile ones, and from many threads at once."""

from __future__ import annotations

import io
import struct
import threading
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from fer_ray.data.preprocess import ImageError, decode_grey


def jpeg_with_exif(pixels: np.ndarray, orientation: int, odd_tag: bool = False) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Canon"  # Make, an ASCII tag
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", exif=exif, quality=100)
    data = buf.getvalue()
    if odd_tag:  # retag Make as XResolution, keeping its ASCII type: valid for readers, but
        # Pillow fails to write such an EXIF block back (what ImageOps.exif_transpose does)
        data = data.replace(b"\x01\x0f\x00\x02", b"\x01\x1a\x00\x02", 1)
    return data


@pytest.mark.parametrize("odd_tag", [False, True])
def test_exif_orientation_is_applied(odd_tag):
    pixels = np.full((10, 20), 30, np.uint8)  # 10 high, 20 wide, a bright left edge
    pixels[:, :4] = 230
    grey = decode_grey(jpeg_with_exif(pixels, orientation=6, odd_tag=odd_tag))
    assert grey.shape == (20, 10)  # orientation 6: turned a quarter clockwise to be upright
    assert grey[:3].mean() > 200 and grey[-3:].mean() < 60  # the left edge is now the top


def test_any_decoder_exception_is_an_image_error(monkeypatch):
    """Pillow meets hostile bytes with struct.error, TypeError and the like: each one is an
    unusable image (an error row, a 4xx), never a crash of the job or a 500."""
    good = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(good, "PNG")

    def broken_load(self):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_load)
    with pytest.raises(ImageError, match="truncated or corrupt image .*error: unpack requires"):
        decode_grey(good.getvalue())


def test_decoding_in_many_threads_leaves_the_warning_filters_alone():
    """The Serve replica decodes in a thread pool; ``catch_warnings`` entered and left out of
    order by several threads used to leave every warning in the process an exception."""
    buf = io.BytesIO()
    Image.fromarray(np.arange(48 * 48, dtype=np.uint8).reshape(48, 48)).save(buf, "PNG")
    data = buf.getvalue()
    before = list(warnings.filters)
    errors = []

    def work():
        try:
            for _ in range(50):
                decode_grey(data)
        except Exception as exc:  # collected: a failure in a thread must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert warnings.filters == before
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("still just a warning")
    assert len(caught) == 1


def test_a_file_too_big_for_any_allowed_image_is_refused_unread(tmp_path):
    from fer_ray.data.files import read_image_file

    big = tmp_path / "huge.jpg"
    with open(big, "wb") as fh:  # sparse: 70 MiB on paper, nothing on disk
        fh.truncate(70 << 20)
    with pytest.raises(ImageError, match="file too large: 73400320 bytes"):
        read_image_file(big, max_pixels=1000)
    assert len(read_image_file(big, max_pixels=1_000_000)) == 70 << 20  # 64 MiB + 8 MB allowed
    with pytest.raises(ImageError, match="file not found"):
        read_image_file(tmp_path / "gone.jpg", max_pixels=1000)


def _tiff(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "TIFF")
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_images_keep_their_brightness(fmt):
    """A 16-bit face reads as the same face saved with 8 bits (within rounding): it used to be
    stretched per image, so an all-white image came out black and a dim face came out bright."""
    face = np.random.default_rng(0).integers(100, 151, (32, 32)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(face.astype(np.uint16) * 257).save(buf, fmt)
    assert np.abs(decode_grey(buf.getvalue()).astype(int) - face).max() <= 1
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(buf, fmt)
    assert (decode_grey(buf.getvalue()) == 255).all()


def test_float_images_are_rescaled_and_non_finite_pixels_refused():
    """A float TIFF is stretched to 0..255; one NaN would have made every pixel NaN -> 0 (black)."""
    ramp = np.linspace(-1.0, 3.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    grey = decode_grey(_tiff(ramp))
    assert grey.dtype == np.uint8 and grey.min() == 0 and grey.max() == 255
    assert np.all(np.diff(grey.astype(int).ravel()) >= 0)  # order kept
    for bad in (np.nan, np.inf, -np.inf):
        spoilt = ramp.copy()
        spoilt[0, 0] = bad
        with pytest.raises(ImageError, match="1 non-finite pixel"):
            decode_grey(_tiff(spoilt))
    unit = np.full((8, 8), 0.5, np.float32)  # a float image on 0..1 keeps its brightness
    assert (decode_grey(_tiff(unit)) == 128).all()


@pytest.mark.parametrize("fmt,options", [("WEBP", {"lossless": True}), ("PNG", {}), ("TIFF", {})])
def test_multi_frame_images_are_refused_not_cut_to_their_first_frame(fmt, options):
    frames = [Image.fromarray(np.full((32, 32), v, np.uint8)) for v in (10, 100, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], **options)
    with pytest.raises(ImageError, match=f"3-frame image \\(animated or multi-page {fmt}\\)"):
        decode_grey(buf.getvalue())
    buf = io.BytesIO()
    frames[1].save(buf, fmt, **options)  # one frame of the same format is fine
    assert (decode_grey(buf.getvalue()) == 100).all()
