"""Which number format, compiler and thread pools a training run uses, chosen from the machine.

``--precision auto`` picks, in this order:

* a GPU of compute capability 7.0 or newer: ``mixed_float16`` (Keras adds loss scaling);
* a CPU with ``avx512_bf16`` or ``amx_bf16``: ``mixed_bfloat16``; oneDNN runs the
  convolutions in bfloat16 (measured in docs/training.md), weights and the
  optimizer stay float32;
* otherwise ``float32``: without those instructions bfloat16 is emulated and slower.

``--jit_compile auto`` compiles the train step with XLA on a GPU only: on the
project's CPUs XLA halved the throughput (docs/training.md).

``--inter_op_threads -1 --intra_op_threads -1`` (auto, the defaults) mean 2 inter-op
threads of 1 intra-op thread each on a 2-core machine without a GPU: the network's scales
give two independent convolutions to run at any time, and each is too small to split
well over two cores (docs/training.md). Elsewhere auto leaves TensorFlow's choice (not
measured on other machines).

``--precision machine`` makes the same choice at every start, a resumption included: the long
runs of ``benchmarks/cifar10_cpu30.py --comparison paper300`` move between machines with and
without native bfloat16, and each epoch's precision and CPU are in ``log.csv``.

A resumed run with ``auto`` keeps the precision it was started with (recorded in
its ``config.json``), so one run is not trained half in one format and half in
another because it was resumed on another machine.
"""

from __future__ import annotations

import os

PRECISIONS = ("auto", "machine", "float32", "mixed_bfloat16", "mixed_float16")
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
    if requested == "machine":  # chosen again at every start, resumed or not
        return machine_precision()
    if requested != "auto":
        return requested
    if previous_run:
        if previous_run.get("precision") in PRECISIONS[2:]:
            return previous_run["precision"]
        # Written before --precision existed: float32 unless --mixed_precision was set.
        return "mixed_float16" if previous_run.get("train", {}).get("mixed_precision") else "float32"
    return machine_precision()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_threads(inter_op: int, intra_op: int, gpus=None, cores: int | None = None) -> tuple[int, int]:
    """(inter-op, intra-op) thread counts for TensorFlow; 0 is TensorFlow's choice, -1 auto.

    Arguments ``gpus`` and ``cores``: for tests.
    """
    if inter_op != -1 and intra_op != -1:
        return inter_op, intra_op
    gpus = _gpus() if gpus is None else gpus
    cores = _usable_cores() if cores is None else cores
    two_core_cpu = not gpus and cores == 2
    return (
        inter_op if inter_op != -1 else (2 if two_core_cpu else 0),
        intra_op if intra_op != -1 else (1 if two_core_cpu else 0),
    )


def resolve_jit_compile(requested: str) -> bool:
    if requested not in JIT_SETTINGS:
        raise ValueError(f"--jit_compile must be one of {', '.join(JIT_SETTINGS)}, got {requested!r}")
    if requested == "auto":
        return bool(_gpus())
    return requested == "on"


__all__ = ["PRECISIONS", "JIT_SETTINGS", "machine_precision", "resolve_precision", "resolve_jit_compile",
           "resolve_threads"]
