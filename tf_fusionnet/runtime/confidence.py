"""An exit's answer: softmax confidences, computed as the cascade's thresholds are fitted."""

from __future__ import annotations

import math

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _last_exit_answers(values) -> list[float]:
    """Per-exit thresholds with the last exit always answering, whatever was given for it."""
    values = [float(v) for v in values]
    values[-1] = float("-inf")
    return values


def _top_probability(logits: np.ndarray) -> tuple[np.ndarray, float]:
    """One image's logits as float64 and its top softmax probability, with no full softmax:
    exp(z - max z) is exactly 1.0 at the top class, so 1 / sum(exp(z - max z)) is bit for bit
    softmax(z).max()."""
    z = logits.astype(np.float64)
    return z, 1.0 / np.exp(z - z.max()).sum()


# Up to this many classes, one image's answer is computed on a Python list: with numpy's fixed
# cost per call, 10 logits took 24.5 us in numpy and 9.6 us as a list (100: 18.5 and 24.4 us;
# interleaved on a 2-core EPYC, docs/export.md).
PYTHON_TOP_MAX_CLASSES = 32


def _top_class_and_confidence(values: list[float]) -> tuple[int, float]:
    """:func:`_top_probability` of one image's logits given as a Python list: the first top class
    and 1 / sum(exp(z - max z)), equal to numpy's to the last bit or two (the sum's order)."""
    top = max(values)
    return values.index(top), 1.0 / sum([math.exp(v - top) for v in values])
