"""Helpers shared by the CIFAR-10 benchmark scripts (not part of the library)."""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_command(cmd: list[str]) -> float:
    """Runs ``cmd`` in the repository root, echoing it; returns its wall clock in seconds."""
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return round(time.time() - start, 1)


def interpolate(xs, ys, x):
    """Accuracy of a curve at cost x (None outside its range: never extrapolated)."""
    points = sorted(zip(xs, ys))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    return float(np.interp(x, xs, ys))


def cascade_sweep(bundle: str, precision: str, images: np.ndarray, labels: np.ndarray) -> list[dict]:
    """The bundle's cascade runner over ``images`` at every budget of its manifest (1 thread, batch 1)."""
    from tqdm import tqdm

    from tf_fusionnet.export.cascade_runner import CascadeRunner, decode_thresholds

    runner = CascadeRunner(bundle, precision=precision, threads=1)
    points = []
    for entry in tqdm(runner.manifest["thresholds"], desc=f"cascade {os.path.basename(bundle)} {precision}",
                      unit="budget"):
        runner.thresholds = decode_thresholds(entry["thresholds"])
        runner.thresholds[-1] = float("-inf")
        start = time.perf_counter()
        results = [runner.classify(img)[0] for img in images]
        ms = (time.perf_counter() - start) * 1e3 / len(images)
        points.append({"budget_macs": entry["budget_macs"], "mean_ms": ms,
                       "mean_macs": float(np.mean([r["macs"] for r in results])),
                       "top1": float(np.mean([r["class"] == y for r, y in zip(results, labels)]))})
    return points
