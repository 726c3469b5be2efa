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


def percent(value) -> str:
    """A 0-1 accuracy as a percentage with two decimals; "-" for None."""
    return "-" if value is None else f"{100 * value:.2f}"


def paired_errors(run_a: str, run_b: str) -> list[dict]:
    """Per same-numbered exit: test top-1 difference a - b and its paired standard error.

    How far apart two classifiers land on the same test images by chance: the scale against
    which matched-cost differences are read. Uses the runs' cached logits.
    """
    from tf_fusionnet.evaluation.metrics import paired_difference
    from tf_fusionnet.evaluation.runs import load_run, run_logits

    a, b = (run_logits(load_run(r), verbose=0) for r in (run_a, run_b))
    labels = a["test_labels"]
    rows = []
    for k in range(min(len(a["test_logits"]), len(b["test_logits"]))):
        diff, se = paired_difference(a["test_logits"][k].argmax(-1) == labels, b["test_logits"][k].argmax(-1) == labels)
        rows.append({"exit": k + 1, "top1_difference": diff, "standard_error": se})
    return rows
