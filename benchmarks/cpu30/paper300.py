"""The plan of issue 44's comparison: the paper's regime (300 epochs) on the paper's data (lossless CIFAR).

``python benchmarks/cifar10_cpu30.py --comparison paper300`` runs it with the driver's planning,
carrying and reporting; this module says which runs, in what order, and how the number format
is chosen.

Phases, in order:

1. ``precision_pilot``: FusionNet for 30 epochs in bfloat16 with the 30-epoch comparison's recipe
   on the JPEG CIFAR-10 (lr 0.05, batch 128, 2 warmup epochs, no mixing, label smoothing 0.1,
   seed 0), read on the validation split only against the three committed float32 seeds of that
   comparison (:func:`precision_choice`, rule fixed before the pilot ran).
2. ``cifar100``: ``fusionnet-cifar`` and ``msdnet-cifar-anytime`` on lossless CIFAR-100 with the
   paper's recipe as train.py's defaults state it (300 epochs, batch 512, SGD 0.1, 20 warm-up
   epochs then cosine, momentum 0.9, coupled weight decay 1e-4, crop and flip, CutMix/MixUp on
   every batch, label smoothing 0.1), seed 0, 5,000 validation images.
3. ``cifar10``: the same two on lossless CIFAR-10.
4. ``official``: MSDNet as its authors' code trains it on CIFAR-100 (batch 64, lr 0.1 divided by
   10 at epochs 150 and 225, no warmup, weight decay 1e-4, no mixing, no label smoothing): the
   MSDNet the paper compared with.
5. ``cifar100_seed1``: a second seed of both models of phase 2.

Every long run trains in the precision the pilot chose: ``machine`` (bfloat16 where the CPU has
native bfloat16, float32 elsewhere, decided again at each start; log.csv records every epoch's)
or ``float32``.
"""

from __future__ import annotations

import math
import os

from common import ROOT
from cpu30.carry import log_rows
from cpu30.jobs import Job, pilot_score

PAPER_PHASES = ("precision_pilot", "cifar100", "cifar10", "official", "cifar100_seed1")
DATA_DIR = os.path.join(ROOT, "..", "shared", "data")
DATASETS = {"cifar100": "cifar100-webp.tar.gz", "cifar10": "cifar10-webp.tar.gz", "jpeg": "cifar10-jpeg.tar.gz"}
MODELS = ("fusionnet-cifar", "msdnet-cifar-anytime")  # candidate first, baseline last
EPOCHS = 300
# The 30-epoch comparison's float32 seeds of FusionNet (the seed-0 rerun replaces the first run,
# as in every verdict of that comparison), the reference of the precision pilot.
FLOAT32_REFERENCE = ("fusionnet-cifar-30ep-seed0", "fusionnet-cifar-30ep-seed1", "fusionnet-cifar-30ep-seed2")
REFERENCE_OUT = os.path.join(ROOT, "benchmarks", "results", "cifar10_cpu30")
PILOT_NAME = "bf16-pilot-fusionnet-cifar-30ep"
# The official MSDNet-PyTorch schedule (main.py: lr * 0.1 ** (epoch >= 150) * 0.1 ** (epoch >= 225)).
OFFICIAL_RECIPE = ("--lr_schedule", "step", "--lr_milestones", "150,225", "--label_smoothing", "0")


# Thread pools per model at batch 512 in bfloat16, measured side by side on the 2-core Intel Xeon
# (AMX) these runs started on: FusionNet 282-284 img/s with 2 intra-op threads against 229-247
# with train.py's auto (2 inter x 1 intra); MSDNet 202-208 with auto against 170-181
# (benchmarks/results/train_threads_batch512.json). Thread settings do not change what is
# computed, and a resumed run may take others (train.py's RESUMABLE_KEYS).
THREADS = {"fusionnet-cifar": ("--inter_op_threads", "2", "--intra_op_threads", "2")}


def data_path(name: str, data_dir: str = DATA_DIR) -> str:
    return os.path.abspath(os.path.join(data_dir, DATASETS[name]))


def precision_pilot_job(data_dir: str = DATA_DIR, smoke: bool = False) -> Job:
    if smoke:
        return Job(PILOT_NAME, "precision_pilot", "fusionnet-tiny", 1, 0, 0.05, 0.0, data="sample", batch=32,
                   precision="mixed_bfloat16")
    return Job(PILOT_NAME, "precision_pilot", "fusionnet-cifar", 30, 0, 0.05, 0.0, data=data_path("jpeg", data_dir),
               batch=128, precision="mixed_bfloat16")


def paper_jobs(precision: str, data_dir: str = DATA_DIR, smoke: bool = False) -> list[Job]:
    """Phases 2-5 in run order, every one in ``precision`` (``machine`` or ``float32``)."""
    models, epochs, batch = (("fusionnet-tiny", "msdnet-tiny"), 2, 32) if smoke else (MODELS, EPOCHS, 512)

    def data(name: str) -> str:
        return "sample" if smoke else data_path(name, data_dir)

    def paper(preset: str, dataset: str, seed: int, phase: str) -> Job:
        tag = "c100" if dataset == "cifar100" else "c10"
        return Job(f"{preset}-{tag}-{epochs}ep-seed{seed}", phase, preset, epochs, seed, 0.1 * batch / 512, 1.0,
                   data=data(dataset), batch=batch, precision=precision, recipe=THREADS.get(preset, ()))

    jobs = [paper(p, "cifar100", 0, "cifar100") for p in models]
    jobs += [paper(p, "cifar10", 0, "cifar10") for p in models]
    jobs.append(Job(f"{models[-1]}-c100-official-{epochs}ep-seed0", "official", models[-1], epochs, 0, 0.1, 0.0,
                    data=data("cifar100"), batch=min(64, batch), precision=precision, recipe=OFFICIAL_RECIPE,
                    warmup=0.0))
    jobs += [paper(p, "cifar100", 1, "cifar100_seed1") for p in models]
    return jobs


def prediction_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Where one more draw from the distribution of ``values`` falls with probability ``level``:
    mean +- t(n-1) * sd * sqrt(1 + 1/n) (normal draws, unknown variance)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd * math.sqrt(1 + 1 / n)
    return mean - half, mean + half


def precision_choice(pilot_rows: list[dict], reference_rows: list[list[dict]]) -> dict:
    """The number format of the long runs, by the rule fixed before the pilot ran (issue 44).

    The bfloat16 pilot's validation top-1 at its last epoch, mean over the exits and last exit,
    must each fall inside the 95% prediction interval of the float32 seeds' (:func:`prediction_interval`:
    where a fourth float32 seed would fall). Inside both: ``machine`` (bfloat16 where the CPU has
    it natively); otherwise ``float32``. Validation split only: no test image is read.
    """
    pilot = pilot_score(pilot_rows)
    refs = [pilot_score(rows) for rows in reference_rows]
    checks = {}
    for key in ("val_top1_mean_over_exits", "val_top1_last_exit"):
        low, high = prediction_interval([r[key] for r in refs])
        checks[key] = {"bfloat16": pilot[key], "float32_seeds": [r[key] for r in refs], "interval": [low, high],
                       "within": low <= pilot[key] <= high}
    within = all(c["within"] for c in checks.values())
    return {"precision": "machine" if within else "float32", "rule": "bfloat16 inside the 95% prediction "
            "interval of the float32 seeds (mean over exits and last exit, validation, last epoch)",
            "checks": checks}


def reference_rows(out: str = REFERENCE_OUT) -> list[list[dict]]:
    return [log_rows(os.path.join(out, name)) for name in FLOAT32_REFERENCE]


def seconds_per_epoch(rows: list[dict], cpu_model: str | None = None, recent: int = 5) -> float | None:
    """Median ``epoch_seconds`` of a run's last ``recent`` epochs, of those on ``cpu_model`` where
    log.csv names it and any are (a resumed run's epochs may come from other machines)."""
    import statistics

    timed = [r for r in rows if r.get("epoch_seconds")]
    same = [r for r in timed if cpu_model and r.get("cpu_model") == cpu_model]
    use = (same or timed)[-recent:]
    return statistics.median(float(r["epoch_seconds"]) for r in use) if use else None


def paper_status(jobs: list[Job], work: str, finished: dict, carry: str | None, cpu_model: str) -> list[str]:
    """One line per run: epochs done, seconds per epoch on this machine, hours left; then the total.

    A run not started yet is timed by a started run of the same preset and batch (a CIFAR-10 run
    costs what a CIFAR-100 one does), else left unestimated."""
    from cpu30.jobs import _run_rows

    rows_of = {job.name: _run_rows(job, work, carry) for job in jobs}
    speed = {job.name: seconds_per_epoch(rows_of[job.name], cpu_model) for job in jobs}
    lines, total_left, unknown = [], 0.0, []
    for job in jobs:
        done = job.epochs if job.name in finished else min(len(rows_of[job.name]), job.epochs)
        per_epoch = speed[job.name] or next((speed[j.name] for j in jobs if speed[j.name] and j.preset == job.preset
                                             and (j.batch, j.recipe) == (job.batch, job.recipe)), None)
        left = job.epochs - done
        if job.name in finished:
            state = "finished, results in --out"
        elif per_epoch is None:
            state = f"{done} of {job.epochs} epochs, time per epoch not known yet"
            unknown.append(job.name)
        else:
            hours = left * per_epoch / 3600
            total_left += hours
            state = (f"{done} of {job.epochs} epochs, {per_epoch:.0f} s per epoch"
                     f"{'' if speed[job.name] else ' (estimated from a run of the same model)'}, {hours:.1f} h left")
        lines.append(f"{job.phase:>15}  {job.name:<44} {state}")
    lines.append(f"all: {total_left:.1f} h left on this machine ({cpu_model})"
                 + (f", not counting {len(unknown)} runs not timed yet" if unknown else ""))
    return lines
