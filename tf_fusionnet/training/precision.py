"""Which number format and compiler a training run uses, chosen from the machine.

``--precision auto`` picks, in this order:

* a GPU of compute capability 7.0 or newer: ``mixed_float16`` (Keras adds loss scaling);
* a CPU with ``avx512_bf16`` or ``amx_bf16``: ``mixed_bfloat16``; oneDNN runs the
  convolutions in bfloat16 (measured in docs/training.md), weights and the
  optimizer stay float32;
* otherwise ``float32``: without those instructions bfloat16 is emulated and slower.

``--jit_compile auto`` compiles the train step with XLA on a GPU only: on the
project's CPUs XLA halved the throughput (docs/training.md).

A resumed run with ``auto`` keeps the precision it was started with (recorded in
its ``config.json``), so one run is not trained half in one format and half in
another because it was resumed on another machine.
"""

from __future__ import annotations

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
JIT_SETTINGS = ("auto", "on", "off")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def _gpus():
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def _gpu_supports_float16(gpus) -> bool:
    import tensorflow as tf

    for gpu in gpus:
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if not capability or tuple(capability) < (7, 0):
            return False
    return bool(gpus)


def machine_precision(simd_flags: list[str] | None = None, gpus=None) -> str:
    """The precision ``auto`` means on this machine (arguments: for tests)."""
    from tf_fusionnet.utils import machine_info

    gpus = _gpus() if gpus is None else gpus
    if gpus:
        return "mixed_float16" if _gpu_supports_float16(gpus) else "float32"
    flags = machine_info()["simd_flags"] if simd_flags is None else simd_flags
    return "mixed_bfloat16" if any(f in flags for f in BF16_CPU_FLAGS) else "float32"


def resolve_precision(requested: str, previous_run: dict | None = None) -> str:
    """The Keras dtype policy name for ``--precision requested``.

    ``previous_run`` is the ``config.json`` of the run being resumed, if any.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    if previous_run:
        if previous_run.get("precision") in PRECISIONS[1:]:
            return previous_run["precision"]
        # Written before --precision existed: float32 unless --mixed_precision was set.
        return "mixed_float16" if previous_run.get("train", {}).get("mixed_precision") else "float32"
    return machine_precision()


def resolve_jit_compile(requested: str) -> bool:
    if requested not in JIT_SETTINGS:
        raise ValueError(f"--jit_compile must be one of {', '.join(JIT_SETTINGS)}, got {requested!r}")
    if requested == "auto":
        return bool(_gpus())
    return requested == "on"


__all__ = ["PRECISIONS", "JIT_SETTINGS", "machine_precision", "resolve_precision", "resolve_jit_compile"]
