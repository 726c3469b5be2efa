"""What the training loader and the on-device runner must do identically, with numpy and Pillow only.

Part of the runtime package that every bundle carries; it never imports TensorFlow or the rest of
the package.

The image-mode rule: every image has a natural channel count (1 for L/1/I;16/I/F, 2 for LA,
3 for RGB/P/CMYK/YCbCr/LAB/HSV, 4 for RGBA/PA); a dataset's channel count is the majority of its
training images' (or ``--channels``); every image, training or on the device, is converted to
that count: 16- and 32-bit greyscale scaled to 8 bits, CMYK and palette images converted to
RGB, alpha dropped or added as opaque, RGB <-> greyscale by ITU-R 601 luma (Pillow's ``L``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
import tempfile
from collections import Counter
from typing import Iterable, Iterator

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CHANNEL_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
_NATURAL_CHANNELS = {
    "1": 1, "L": 1, "I": 1, "I;16": 1, "I;16B": 1, "I;16L": 1, "I;16N": 1, "F": 1,
    "LA": 2, "La": 2,
    "RGB": 3, "P": 3, "CMYK": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
    "RGBA": 4, "RGBa": 4, "PA": 4, "RGBX": 3,
}


# How an image of another size reaches the model's input (the manifest's ``input.resize``, a
# preset's too): "center_crop_bilinear" crops the largest centred region of the input's aspect
# ratio, then resizes it with Pillow's bilinear filter, which widens its support when shrinking
# (antialiased: a 640x480 photo is averaged down, not sampled); the crop keeps a 4:3 photo from being
# squashed into a square input. "none": other sizes are refused.
RESIZE_MODES = ("center_crop_bilinear", "none")
DEFAULT_RESIZE = "center_crop_bilinear"


def fit_to_input(array: np.ndarray, height: int, width: int, mode: str = DEFAULT_RESIZE) -> tuple[np.ndarray, bool]:
    """uint8 (H, W, C) image as the model's (height, width, C) input under ``mode``; whether it changed.

    The crop box is ``ImageOps.fit``'s (the largest centred box of the input's aspect ratio, on
    whole pixels); the crop is taken before the resize, not through ``resize(box=...)`` as
    ``ImageOps.fit`` does, whose filter then reads pixels outside the box: the web page's canvas
    crops the same way, so both resize the same pixels.
    """
    if array.shape[:2] == (height, width):
        return array, False
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    if mode == "none":
        raise ValueError(f"image is {'x'.join(map(str, array.shape))} (HxWxC), the model takes "
                         f"{height}x{width}x{array.shape[2]} and this model does not resize")
    from PIL import Image

    left, top, right, bottom = center_crop_box(array.shape[1], array.shape[0], width, height)
    channels = array.shape[2]
    cropped = np.ascontiguousarray(array[top:bottom, left:right])
    img = Image.fromarray(cropped[..., 0] if channels == 1 else cropped, CHANNEL_MODES[channels])
    fitted = np.asarray(img.resize((width, height), Image.BILINEAR), dtype=np.uint8)
    return (fitted[..., None] if fitted.ndim == 2 else fitted), True


def center_crop_box(in_width: int, in_height: int, out_width: int, out_height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom): the largest centred box of the output's aspect ratio, on whole pixels."""
    if in_width * out_height > in_height * out_width:  # wider than the output: crop the sides
        width = max(1, round(in_height * out_width / out_height))
        left = (in_width - width) // 2
        return left, 0, left + width, in_height
    height = max(1, round(in_width * out_height / out_width))
    top = (in_height - height) // 2
    return 0, top, in_width, top + height


def display_name(name: str) -> str:
    """A file name as text that cannot forge output: bytes that are not UTF-8 (kept by Python as
    surrogates) become \\xNN, control characters (a newline in a name) their escapes."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def machine_key() -> str:
    """A short digest of what decides this machine's speed (CPU model and flags, cores, architecture),
    so that timings measured on one machine are never taken for another's."""
    import platform

    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model") and not model:
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    text = "|".join([platform.machine(), platform.processor(), model, flags, str(os.cpu_count())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ImageModeError(ValueError):
    """An image whose mode the rule does not cover; the message is for the user."""


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def captured_stderr_fd(expected_errors: tuple = ()) -> Iterator[None]:
    """Sends file descriptor 2 to a temporary file; replays it if the block raises anything
    but ``expected_errors`` (errors whose own message is enough for the user).

    TensorFlow's C++ start-up lines ("oneDNN custom operations are on", "Could not find cuda
    drivers", "failed call to cuInit") and LiteRT's "Created TensorFlow Lite XNNPACK delegate" are written to fd 2 before its log level applies, so
    ``TF_CPP_MIN_LOG_LEVEL`` does not hide them and Python's ``sys.stderr`` never sees them.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException as error:
            os.dup2(saved, 2)
            if not isinstance(error, expected_errors):
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def check_regular_file(path: str) -> None:
    """Raises OSError unless ``path`` is a regular file (a FIFO or a device would block or never end)."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise OSError(f"{path}: not a regular file")


def natural_channels(mode: str, has_transparency: bool = False) -> int:
    """Channel count of a Pillow image mode under the rule above."""
    if mode == "P" and has_transparency:
        return 4
    if mode not in _NATURAL_CHANNELS:
        raise ImageModeError(f"unsupported image mode {mode}")
    return _NATURAL_CHANNELS[mode]


def majority_channels(counts: Iterable[int]) -> int:
    """The most common channel count; ties go to the larger count (no information is dropped)."""
    tally = Counter(counts)
    if not tally:
        raise ValueError("no images")
    return max(tally, key=lambda c: (tally[c], c))


def float_pixels(values: np.ndarray) -> np.ndarray:
    """A float image (Pillow mode "F", e.g. a 32-bit TIFF) on the 0..255 scale.

    Float images are written on one of two scales: 0..1 (scientific and HDR tools) or 0..255.
    Rounding 0..1 values as if they were 0..255 gives a black-and-white image of 0s and 1s,
    which trains and classifies without a word, so the scale is read off the values: all within
    [0, 1] -> multiplied by 255; within [0, 255] -> as they are; anything else (negative, above
    255, NaN or infinite) is refused, since no scale is known for it. (An image on the 0..255
    scale whose brightest pixel is at most 1 would be read as 0..1: nearly black either way.)"""
    if values.size == 0:
        return values
    if not np.isfinite(values).all():
        raise ImageModeError("float image with NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise ImageModeError(f"float image with values in [{low:g}, {high:g}]; expected 0..1 or 0..255")
    return values * 255.0 if high <= 1.0 else values


def image_to_array(img, channels: int) -> tuple[np.ndarray, bool]:
    """A loaded Pillow image as uint8 (H, W, channels), and whether it had to be converted.

    Args:
        img: a loaded ``PIL.Image.Image``.
        channels: 1, 2, 3 or 4.
    """
    if channels not in CHANNEL_MODES:
        raise ImageModeError(f"channels must be 1, 2, 3 or 4, got {channels}")
    target = CHANNEL_MODES[channels]
    if img.mode == target:
        array = np.asarray(img, dtype=np.uint8)
        return (array[..., None] if array.ndim == 2 else array), False
    natural_channels(img.mode, "transparency" in img.info)  # refuses unknown modes
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        from PIL import Image

        wide = np.asarray(img).astype(np.float64)
        if img.mode == "F":
            wide = float_pixels(wide)
        # 16-bit data (also what PNG's "I" mode holds) is scaled by one fixed factor, 65535 ->
        # 255, not clipped at 255 as Pillow's convert("L") would, and not by its own maximum,
        # which would make one dark image's 200 stay 200 and another's become 1.
        else:
            wide = wide / 257.0
        img = Image.fromarray(np.clip(np.round(wide), 0, 255).astype(np.uint8), "L")
    elif img.mode in ("P", "PA"):
        img = img.convert("RGBA" if (img.mode == "PA" or "transparency" in img.info) else "RGB")
    elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        img = img.convert("RGB")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("La", "RGBa"):
        img = img.convert({"La": "LA", "RGBa": "RGBA"}[img.mode])
    if img.mode != target:
        if img.mode in ("RGBA", "LA") and target in ("RGB", "L") and img.mode[0] != target[0]:
            img = img.convert(img.mode[:-1])  # drop alpha first, then change colour
        img = img.convert(target)
    array = np.asarray(img, dtype=np.uint8)
    return (array[..., None] if array.ndim == 2 else array), True


__all__ = [
    "DEFAULT_RESIZE",
    "RESIZE_MODES",
    "fit_to_input",
    "center_crop_box",
    "display_name",
    "machine_key",
    "captured_stderr_fd",
    "IMAGE_EXTENSIONS",
    "CHANNEL_MODES",
    "ImageModeError",
    "sha256_file",
    "check_regular_file",
    "natural_channels",
    "majority_channels",
    "float_pixels",
    "image_to_array",
]
