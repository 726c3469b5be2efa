"""int8 tensors as TFLite reads and writes them, and the conversions between two stages' scales."""

from __future__ import annotations

import numpy as np


def quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """float -> int8 as TFLite's QUANTIZE computes it: x / scale in float32, rounded half away
    from zero, plus the zero point, clamped to [-128, 127]."""
    y = (np.asarray(x, np.float32) / np.float32(scale)).astype(np.float64)
    q = np.trunc(y + np.copysign(0.5, y)) + zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """int8 -> float32 as TFLite's DEQUANTIZE: scale * (q - zero_point)."""
    return (np.asarray(q, np.int32) - zero_point).astype(np.float32) * np.float32(scale)


def same_quantization(a: tuple[float, int] | None, b: tuple[float, int] | None) -> bool:
    """Whether a tensor written with quantisation ``a`` reads as ``b`` without conversion (None: float32).

    A stage's int8 output and the next stage's input are calibrated on the same float activations,
    so in MSDNet's and FusionNet's bundles their scales agree to float32 rounding (relative 3e-7
    measured), not bit for bit; in RANet's, the converter gives two of stage 2's inputs other
    scales than stage 1's outputs, and those are requantised. Within a
    relative 1e-6 and with one zero point, dequantising and quantising again gives back every
    int8 value (|q - zero point| <= 255, so the value moves by under 3e-4 of a step)."""
    if a is None or b is None:
        return a is None and b is None
    return a[1] == b[1] and abs(a[0] - b[0]) <= 1e-6 * abs(b[0])


def _converter(source: tuple[float, int] | None, target: tuple[float, int] | None):
    """The function that turns a tensor quantised as ``source`` into one quantised as ``target``."""
    if source is None:
        return lambda x: quantize(x, *target)
    if target is None:
        return lambda q: dequantize(q, *source)
    return lambda q: quantize(dequantize(q, *source), *target)


def _tensor_quantization(detail: dict) -> tuple[float, int] | None:
    """(scale, zero point) of a stage's int8 tensor, None for a float32 one."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.int8:
        scale, zero_point = detail["quantization"]
        return float(scale), int(zero_point)
    if dtype != np.float32:
        raise ValueError(f"tensor of type {dtype}; stages take and return float32 or int8 (stage 1 may read uint8)")
    return None
