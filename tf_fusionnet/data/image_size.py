"""``--image_size H,W``: parsed once, for training, evaluation and export alike."""

from __future__ import annotations

MAX_IMAGE_SIDE = 2048  # the loader holds every image in memory; beyond this it is not the tool


def parse_image_size(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--image_size must be H,W, got {text!r}") from None
    if not (16 <= h <= MAX_IMAGE_SIDE and 16 <= w <= MAX_IMAGE_SIDE):
        raise ValueError(f"--image_size must be between 16,16 and {MAX_IMAGE_SIDE},{MAX_IMAGE_SIDE}, got {text!r}")
    return h, w
