"""Evaluating a run in both settings of the paper and writing RUN/eval/."""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Sequence

import numpy as np

from tf_fusionnet.exits import budgeted_curve, simulate, thresholds_for_budget
from tf_fusionnet.evaluation.metrics import expected_calibration_error, fit_temperature, softmax, topk_accuracy
from tf_fusionnet.evaluation.plots import plot_curves
from tf_fusionnet.runs.reading import Run, RunError, load_run, run_logits
from tf_fusionnet.runtime.portable import sha256_file
from tf_fusionnet.utils import atomic_path, atomic_write_json, atomic_write_text


def _write_csv(path: str, rows: Sequence[dict], columns: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def anytime_table(probs: np.ndarray, labels: np.ndarray, exit_macs: Sequence[int]) -> list[dict]:
    return [
        {
            "exit": k + 1,
            "macs": int(exit_macs[k]),
            "top1": topk_accuracy(probs[k], labels, 1),
            "top5": topk_accuracy(probs[k], labels, 5),
            "ece": expected_calibration_error(probs[k], labels),
        }
        for k in range(len(exit_macs))
    ]


def run_label(run: Run) -> str:
    """A plot legend entry: the run's folder name, and its preset where that differs."""
    name = os.path.basename(os.path.normpath(run.run_dir))
    return name if name == run.preset else f"{name} ({run.preset})"


def evaluate_run(
    run_dir: str,
    checkpoint: str = "model",
    budget: float | None = None,
    calibrate: bool = False,
    dataset: str | None = None,
    batch_size: int = 500,
    verbose: Any = "auto",
) -> dict[str, Any]:
    """Anytime and budgeted evaluation of one run; writes everything into ``RUN/eval/``."""
    run = load_run(run_dir)
    checkpoint_path = run.checkpoint_path(checkpoint)
    measured = sha256_file(checkpoint_path) if os.path.exists(checkpoint_path) else None
    logits = run_logits(run, checkpoint, batch_size, dataset, verbose)
    if sha256_file(checkpoint_path) != measured:  # training wrote a new epoch meanwhile
        raise RunError(f"{checkpoint_path}: changed during the evaluation (training is still writing it); "
                       "run evaluate.py again, or evaluate a copy of the run")
    macs = run.exit_macs
    if logits["test_logits"].shape[0] != len(macs):
        raise RunError(f"{run_dir}: the checkpoint has {logits['test_logits'].shape[0]} exits, "
                       f"config.json lists {len(macs)}")
    if logits["val_logits"].shape[1] == 0:
        raise RunError(f"{run_dir}: the run has no validation split (--val_size 0), "
                       "and thresholds are never fitted on test images")
    val_probs, test_probs = softmax(logits["val_logits"]), softmax(logits["test_logits"])
    val_labels, test_labels = logits["val_labels"], logits["test_labels"]
    out = run.eval_dir
    os.makedirs(out, exist_ok=True)
    # Every result names the checkpoint it measured (runs.reading.eval_results reads it back), and
    # what this evaluation did not compute is removed, not left beside it from an earlier one.
    for stale, wanted in (("budget.json", budget is not None), ("calibration.json", calibrate)):
        if not wanted and os.path.exists(os.path.join(out, stale)):
            os.remove(os.path.join(out, stale))
    with atomic_path(os.path.join(out, "probs.npz")) as tmp:
        np.savez_compressed(tmp, val_probs=val_probs.astype(np.float32), test_probs=test_probs.astype(np.float32),
                            val_labels=val_labels, test_labels=test_labels)

    anytime = anytime_table(test_probs, test_labels, macs)
    atomic_write_json(os.path.join(out, "anytime.json"), {"preset": run.preset, "checkpoint": checkpoint,
                                                          "checkpoint_sha256": measured, "exits": anytime})
    _write_csv(os.path.join(out, "anytime.csv"), anytime, ["exit", "macs", "top1", "top5", "ece"])

    points = budgeted_curve(val_probs, test_probs, test_labels, macs)
    atomic_write_json(os.path.join(out, "budgeted.json"), {"preset": run.preset, "checkpoint": checkpoint,
                                                           "checkpoint_sha256": measured,
                                                           "num_val": int(len(val_labels)), "points": points})
    _write_csv(os.path.join(out, "budgeted.csv"),
               [{**p, "exit_counts": " ".join(map(str, p["exit_counts"]))} for p in points],
               ["q", "avg_macs", "top1", "exit_counts"])

    summary: dict[str, Any] = {"run": run, "anytime": anytime, "budgeted": points}
    label = run_label(run)
    plot_curves(os.path.join(out, "anytime.png"),
                [{"label": label, "x": [e["macs"] for e in anytime], "y": [e["top1"] for e in anytime]}],
                "Anytime prediction (test)")
    curves = [{"label": label, "x": [p["avg_macs"] for p in points], "y": [p["top1"] for p in points], "marker": "."}]

    if calibrate:
        temperatures = [fit_temperature(logits["val_logits"][k], val_labels) for k in range(len(macs))]
        t = np.asarray(temperatures)[:, None, None]
        cal_val, cal_test = softmax(logits["val_logits"], t), softmax(logits["test_logits"], t)
        cal_points = budgeted_curve(cal_val, cal_test, test_labels, macs)
        shifts = [c["top1"] - p["top1"] for c, p in zip(cal_points, points)]
        calibration = {
            "checkpoint_sha256": measured,
            "temperatures": temperatures,
            "ece_before": [e["ece"] for e in anytime],
            "ece_after": [expected_calibration_error(cal_test[k], test_labels) for k in range(len(macs))],
            "budgeted_points": cal_points,
            "top1_shift_per_q": shifts,
            "max_abs_top1_shift": float(np.max(np.abs(shifts))),
        }
        atomic_write_json(os.path.join(out, "calibration.json"), calibration)
        curves.append({"label": f"{label} (temperature-scaled)", "x": [p["avg_macs"] for p in cal_points],
                       "y": [p["top1"] for p in cal_points], "marker": "x"})
        summary["calibration"] = calibration
    plot_curves(os.path.join(out, "budgeted.png"), curves, "Budgeted batch classification (test)",
                xlabel="average MACs per image (M)")

    if budget is not None:
        fitted = thresholds_for_budget(val_probs, val_labels, macs, budget)
        if fitted is None:
            raise RunError(f"--budget {budget:.0f} MACs is below the cost of the first exit ({macs[0]} MACs)")
        on_test = simulate(test_probs, test_labels, fitted["thresholds"], macs)
        summary["budget"] = {
            "checkpoint_sha256": measured,
            "budget_macs": float(budget),
            "q": float(fitted["q"]),
            "thresholds": [float(x) for x in fitted["thresholds"]],
            "val_avg_macs": fitted["val"].avg_macs,
            "val_top1": fitted["val"].top1,
            "test_avg_macs": on_test.avg_macs,
            "test_top1": on_test.top1,
            "test_exit_counts": on_test.exit_counts,
        }
        atomic_write_json(os.path.join(out, "budget.json"), summary["budget"])
    return summary


COMPARE_MARKER = ".tf_fusionnet_compare"  # marks a folder of overlay plots this tool wrote


def check_compare_dir(out_dir: str) -> None:
    """Refuses an ``--out`` that holds anything but an earlier comparison's plots, so that none
    of the user's files (an ``anytime.png`` of their own, say) is written over."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise RunError(f"--out {out_dir}: exists and is not a folder")
    if not os.path.isdir(out_dir):
        return
    entries = set(os.listdir(out_dir))
    ours = {COMPARE_MARKER, "anytime.png", "budgeted.png"}
    if entries and (COMPARE_MARKER not in entries or entries - ours):
        raise RunError(f"--out {out_dir}: a folder with files this tool did not write; refusing to write the "
                       "overlay plots into it (give a new or empty folder)")


def compare_runs(summaries: Sequence[dict[str, Any]], out_dir: str) -> list[str]:
    """Overlay plots of several evaluated runs, labelled by run (and its full path where names repeat),
    in ``out_dir`` (new, empty or an earlier comparison: :func:`check_compare_dir`)."""
    check_compare_dir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, COMPARE_MARKER), "w") as f:
        f.write("overlay plots of evaluate.py --run ... --out\n")
    labels = [run_label(s["run"]) for s in summaries]
    labels = [lab if labels.count(lab) == 1 else f"{lab}: {s['run'].run_dir}" for lab, s in zip(labels, summaries)]
    anytime = [{"label": lab, "x": [e["macs"] for e in s["anytime"]], "y": [e["top1"] for e in s["anytime"]]}
               for lab, s in zip(labels, summaries)]
    budgeted = [{"label": lab, "x": [p["avg_macs"] for p in s["budgeted"]], "y": [p["top1"] for p in s["budgeted"]],
                 "marker": "."} for lab, s in zip(labels, summaries)]
    paths = [os.path.join(out_dir, "anytime.png"), os.path.join(out_dir, "budgeted.png")]
    plot_curves(paths[0], anytime, "Anytime prediction (test)")
    plot_curves(paths[1], budgeted, "Budgeted batch classification (test)", xlabel="average MACs per image (M)")
    return paths


def format_summary(summary: dict[str, Any]) -> str:
    run: Run = summary["run"]
    lines = [f"{run.run_dir} ({run.preset})", "anytime prediction (test):",
             f"{'exit':>4}  {'MACs (M)':>9}  {'top-1':>7}  {'top-5':>7}  {'ECE':>6}"]
    for e in summary["anytime"]:
        lines.append(f"{e['exit']:>4}  {e['macs'] / 1e6:>9.2f}  {100 * e['top1']:>6.2f}%  {100 * e['top5']:>6.2f}%  "
                     f"{e['ece']:>6.3f}")
    pts = summary["budgeted"]
    lines.append("budgeted batch classification (test; thresholds fitted on validation so that exit k takes a "
                 "share of images proportional to q**k, as MSDNet's code does: the smaller q, the more stop early); "
                 f"every 4th of the {len(pts)} values of q, all in budgeted.csv:")
    lines.append(f"{'q':>5}  {'avg MACs (M)':>12}  {'top-1':>7}")
    for p in pts[::4]:
        lines.append(f"{p['q']:>5.2f}  {p['avg_macs'] / 1e6:>12.2f}  {100 * p['top1']:>6.2f}%")
    if "calibration" in summary:
        c = summary["calibration"]
        lines.append("temperature scaling per exit (fitted on validation): T = "
                     + ", ".join(f"{t:.2f}" for t in c["temperatures"]))
        lines.append("  ECE before -> after: " + ", ".join(f"{a:.3f}->{b:.3f}" for a, b in zip(c["ece_before"], c["ece_after"])))
        lines.append(f"  largest change of budgeted top-1 at equal q: {100 * c['max_abs_top1_shift']:.2f} points")
    if "budget" in summary:
        b = summary["budget"]
        lines.append(f"budget {b['budget_macs'] / 1e6:.2f}M MACs: validation {b['val_avg_macs'] / 1e6:.2f}M, "
                     f"test {b['test_avg_macs'] / 1e6:.2f}M MACs at {100 * b['test_top1']:.2f}% top-1; "
                     f"exits {b['test_exit_counts']}")
    return "\n".join(lines)
