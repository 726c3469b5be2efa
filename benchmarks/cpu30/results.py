"""What the driver keeps of a finished run in ``--out``: its tables, per-image predictions and
logits, its paired errors against the baseline, and its cascade sweep."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys

import numpy as np

from common import (cascade_sweep, load_predictions, paired_errors_of, run_command, save_predictions,
                    test_predictions)
from cpu30.carry import log_rows
from cpu30.jobs import PILOT_PHASES, Job, pilot_score

PREDICTIONS = "test_predictions.npz"


LOGITS = "logits.npz"  # per-image validation and test logits (float32), so budgets can be refitted


def collect(job: Job, work: str, out: str) -> dict:
    """Copies a finished run's results to out/NAME/ and returns its summary entry."""
    run = os.path.join(work, job.name)
    dest = os.path.join(out, job.name)
    os.makedirs(dest, exist_ok=True)
    shutil.copy(os.path.join(run, "log.csv"), os.path.join(dest, "log.csv"))
    from tf_fusionnet.utils import machine_info

    rows = log_rows(run)
    # summary.json's top-level "machine" is the latest invocation's; a run's seconds need their own
    # (a carried run may have begun elsewhere: this is the machine it finished on).
    entry = {**dataclasses.asdict(job), "warmup_epochs": job.warmup_epochs,
             "train_seconds": sum(float(r["epoch_seconds"]) for r in rows if r.get("epoch_seconds")),
             "finished_on": machine_info()}
    if job.phase in PILOT_PHASES:
        return {**entry, **pilot_score(rows)}
    for name in ("anytime.json", "anytime.csv", "budgeted.json", "budgeted.csv"):
        shutil.copy(os.path.join(run, "eval", name), os.path.join(dest, name))
    save_predictions(os.path.join(dest, PREDICTIONS), test_predictions(run))
    save_logits(os.path.join(dest, LOGITS), run)
    with open(os.path.join(run, "eval", "anytime.json")) as f:
        entry["anytime"] = json.load(f)["exits"]
    entry.update(budgeted_entry(os.path.join(run, "eval", "budgeted.json")))
    return entry


def save_logits(path: str, run: str) -> None:
    """Every exit's validation and test logits of a finished run, with the labels (about 3 MB)."""
    from tf_fusionnet.runs.reading import load_run, run_logits
    from tf_fusionnet.utils import atomic_path

    logits = run_logits(load_run(run), verbose=0)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{k: (v.astype(np.float32) if k.endswith("_logits") else v)
                                      for k, v in logits.items()})


def budgeted_entry(path: str) -> dict:
    """The budgeted points of an evaluation's budgeted.json, and how many test images it counted."""
    with open(path) as f:
        points = json.load(f)["points"]
    return {"budgeted": [{"avg_macs": p["avg_macs"], "top1": p["top1"]} for p in points],
            "test_images": int(sum(points[0]["exit_counts"]))}


def backfill_predictions(job: Job, work: str, out: str) -> bool:
    """Keeps the per-image predictions of a run finished before the driver kept them, if its
    run directory is still there; returns whether out/NAME/ has them now."""
    path = os.path.join(out, job.name, PREDICTIONS)
    if not os.path.exists(path) and os.path.exists(os.path.join(work, job.name, "model.keras")):
        save_predictions(path, test_predictions(os.path.join(work, job.name)))
    return os.path.exists(path)


def phase_baseline(jobs: list[Job], base_preset: str) -> Job:
    """The run a phase's differences are taken against: its MSDNet (the last main preset)."""
    return next((j for j in jobs if j.preset == base_preset), jobs[-1])


def pair_phase(jobs: list[Job], out: str, base_preset: str, paired: dict) -> list[str]:
    """Paired errors of each finished run of a phase against the phase's baseline, from the
    per-image predictions in ``out`` (a run without them is left out of ``paired``); returns the
    runs paired now, not before."""
    have = [j for j in jobs if os.path.exists(os.path.join(out, j.name, PREDICTIONS))]
    baseline = phase_baseline(jobs, base_preset) if have else None
    if baseline not in have:
        return []
    base = load_predictions(os.path.join(out, baseline.name, PREDICTIONS))
    added = [j.name for j in have if j is not baseline and j.name not in paired]
    for name in added:
        paired[name] = paired_errors_of(load_predictions(os.path.join(out, name, PREDICTIONS)), base)
    return added


def model_cascade(job: Job, s, work: str, summary: dict) -> bool:
    """Exports a finished model (float32, int8) and sweeps both bundles through the cascade
    runner, unless done before; returns whether it measured anything. Needs the run directory,
    so it runs as soon as the model has finished."""
    from tf_fusionnet.data.sources import load_dataset

    cascade = summary.setdefault("cascade", {})
    todo = [p for p in ("float32", "int8") if f"{job.name} {p}" not in cascade]
    run = os.path.join(work, job.name)
    if not todo or not os.path.exists(os.path.join(run, "model.keras")):
        return False
    bundle = os.path.join(work, f"bundle-{job.name}")
    if not os.path.exists(os.path.join(bundle, "manifest.json")):
        run_command([sys.executable, "export/to_tflite.py", "--run", run, "--out", bundle,
                     "--precision", "float32,int8"])
    test = load_dataset(s["data"])
    n = s.get("cascade_images") or len(test.test_labels)
    from tf_fusionnet.utils import machine_info

    measured_on = summary.setdefault("cascade_measured_on", {})
    for precision in todo:
        cascade[f"{job.name} {precision}"] = cascade_sweep(bundle, precision, test.test_images[:n],
                                                           test.test_labels[:n])
        measured_on[f"{job.name} {precision}"] = {**machine_info(), "at": utc_now()}
    return True


def utc_now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def load_summary(out: str) -> dict:
    path = os.path.join(out, "summary.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"jobs": {}}
