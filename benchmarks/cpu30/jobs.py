"""The planner of ``benchmarks/cifar10_cpu30.py``: which runs, in what order, and how far they are."""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np

from common import run_command
from cpu30.carry import epochs_carried, log_rows

@dataclasses.dataclass
class Job:
    name: str
    phase: str
    preset: str
    epochs: int
    seed: int
    lr: float
    mix_prob: float
    distill_alpha: float = 0.0
    distill_temperature: float = 3.0
    distill_teacher: str = "last"
    gradient_equilibrium: bool = False
    # Issue 44's runs differ from each other in data, batch, precision and recipe; "" / 0 / ()
    # take the comparison's setting (``s``), as every run of the 30-epoch comparison does.
    data: str = ""
    batch: int = 0
    precision: str = ""
    recipe: tuple[str, ...] = ()  # further train.py flags (the official MSDNet schedule, say)
    warmup: float = -1.0  # -1: the paper's share of the epochs, below

    @property
    def warmup_epochs(self) -> float:
        if self.warmup >= 0:
            return self.warmup
        return max(1, round(self.epochs * 20 / 300))


PHASES = ("pilot", "main", "ablation", "seed", "distill_pilot", "distill", "seed2", "rerun", "ge_pilot")
PILOT_PHASES = ("pilot", "distill_pilot", "ge_pilot", "precision_pilot")  # scored on the validation split only


# Issue 33: three seeds of both models, with and without distillation, every one with per-image files.
DISTILL_PHASES = ("distill", "seed2", "rerun")


ABLATIONS = ("fusionnet-cifar-nofusion", "fusionnet-cifar-msdnetstem", "fusionnet-cifar-msdnettransition",
             "msdnet-cifar-fusion")


def pilot_jobs(s) -> list[Job]:
    return [Job(f"pilot-lr{lr}-mix{mix}", "pilot", s["pilot_preset"], s["pilot_epochs"], 0, float(lr), float(mix))
            for lr in s["pilot_lrs"] for mix in s["pilot_mix"]]


def later_jobs(s, lr: float, mix: float) -> list[Job]:
    """Every run after the pilot, in the order they train.

    The first model and the baseline train first, then their second seed, then the ablation,
    and the other main models (RANet) last: RANet's 30 epochs take about twice either's, while
    the paper's claims rest on the FusionNet-MSDNet pair, read against the seed spread, and on
    the ablation. The second seed comes before the ablation because it is also the pair whose
    per-image predictions and bundles exist when the first pair's are lost.
    """
    pair = s["main"][:1] + s["main"][-1:]
    jobs = [Job(p, "main", p, s["epochs"], 0, lr, mix) for p in pair]
    e = s["seed_epochs"]
    jobs += [Job(f"{p}-{e}ep-seed1", "seed", p, e, 1, lr, mix) for p in pair]
    e = s["ablation_epochs"]
    jobs += [Job(f"{p}-{e}ep", "ablation", p, e, 0, lr, mix) for p in pair]
    jobs += [Job(f"{p}-{e}ep", "ablation", p, e, 0, lr, mix) for p in s["ablations"]]
    jobs += [Job(p, "main", p, s["epochs"], 0, lr, mix) for p in s["main"][1:-1]]
    return jobs


def distill_pilot_jobs(s, lr: float, mix: float) -> list[Job]:
    """Exit distillation at each alpha:T of ``--distill_pilot`` on the pilot preset, as long as the
    ablation runs, so the ablation's run of that preset (alpha 0) is the pilot's reference."""
    e = s["ablation_epochs"]
    return [Job(f"distill-pilot-a{a:g}-t{t:g}", "distill_pilot", s["pilot_preset"], e, 0, lr, mix, a, t)
            for a, t in s.get("distill_pilot", [])]


def distill_jobs(s, lr: float, mix: float, distill: dict) -> list[Job]:
    """Issue 33's runs, in the order they train: both main models (FusionNet and the baseline)
    with the pilot's distillation at seed 0, then both without it at seed 2 (the third seed of
    the plain recipe: seeds 0 and 1 are the main and seed phases), then distilled seeds 1 and 2,
    then the reruns of :func:`rerun_jobs`."""
    pair = s["main"][:1] + s["main"][-1:]
    e = s["epochs"]
    a, t, teacher = distill["alpha"], distill["temperature"], distill["teacher"]
    def distilled(seed):
        return [Job(f"{p}-distill-{e}ep-seed{seed}", "distill", p, e, seed, lr, mix, a, t, teacher) for p in pair]
    return (distilled(0) + [Job(f"{p}-{e}ep-seed2", "seed2", p, e, 2, lr, mix) for p in pair] + distilled(1)
            + distilled(2) + rerun_jobs(s, lr, mix))


def rerun_jobs(s, lr: float, mix: float) -> list[Job]:
    """Seed 0 again of each main model in ``s["rerun_seed0"]``: those whose first run kept no
    per-image predictions (FusionNet's, lost with its machine), so that every cell of the
    comparison can be read with its per-image error. Fixed before it ran: the rerun replaces
    the first run in every verdict whatever it scores (:func:`cpu30.verdicts.cell_entries`);
    the first run's table stays, and the two side by side show what a rerun of one seed moves."""
    e = s["epochs"]
    return [Job(f"{p}-{e}ep-seed0", "rerun", p, e, 0, lr, mix) for p in s.get("rerun_seed0", ())]


def ge_pilot_jobs(s, lr: float, mix: float) -> list[Job]:
    """Gradient equilibrium on the pilot preset, as long as the ablation runs (whose run of that
    preset is its reference), after the comparison's runs: a first reading of the switch on the
    validation split, not a claim."""
    return [Job(f"ge-pilot-{s['pilot_preset']}", "ge_pilot", s["pilot_preset"], s["ablation_epochs"], 0, lr, mix,
                gradient_equilibrium=True)]


def planned_jobs(s, summary: dict) -> list[Job]:
    """Every job the summary's choices so far determine (the later ones appear once chosen)."""
    recipe = summary.get("recipe")
    if not recipe:
        return pilot_jobs(s)
    lr, mix = recipe["lr"], recipe["mix_prob"]
    jobs = pilot_jobs(s) + later_jobs(s, lr, mix) + distill_pilot_jobs(s, lr, mix)
    if summary.get("distill"):
        jobs += distill_jobs(s, lr, mix, summary["distill"]) + ge_pilot_jobs(s, lr, mix)
    return jobs


def choose_distillation(pilots: list[Job], reference: dict | None, jobs: dict) -> dict:
    """The pilot's alpha:T with the best validation top-1 (mean over exits); the plain recipe's
    score (the ablation run of the same preset and length) is recorded beside it. Distillation is
    run whichever wins: the comparison, not the pilot, decides whether it helps."""
    best = max(pilots, key=lambda j: jobs[j.name]["val_top1_mean_over_exits"])
    choice = {"alpha": best.distill_alpha, "temperature": best.distill_temperature, "teacher": best.distill_teacher,
              "chosen_by": best.name, "val_top1_mean_over_exits": jobs[best.name]["val_top1_mean_over_exits"]}
    if reference is not None:
        choice["plain_recipe_val_top1_mean_over_exits"] = reference["val_top1_mean_over_exits"]
    return choice


def run_groups(jobs: list[Job]) -> list[tuple[str, list[Job]]]:
    """``jobs`` cut where the phase changes: (phase, consecutive jobs of it), in run order."""
    groups: list[tuple[str, list[Job]]] = []
    for job in jobs:
        if groups and groups[-1][0] == job.phase:
            groups[-1][1].append(job)
        else:
            groups.append((job.phase, [job]))
    return groups


def pilot_score(rows: list[dict]) -> dict:
    """Validation top-1 of the last epoch: mean over exits and last exit (no test data)."""
    last = rows[-1]
    accs = [float(last[k]) for k in sorted((k for k in last if k.startswith("val_exit_") and k.endswith("_accuracy")),
                                            key=lambda k: int(k.split("_")[2]))]
    return {"val_top1_mean_over_exits": float(np.mean(accs)), "val_top1_last_exit": accs[-1],
            "val_top1_per_exit": accs}


def _run_rows(job: Job, work: str, carry: str | None) -> list[dict]:
    """The log of the job's run in ``work``, or of its carried state where that holds more epochs."""
    rows = log_rows(os.path.join(work, job.name))
    carried = log_rows(os.path.join(carry, job.name)) if carry else []
    return carried if len(carried) > len(rows) else rows


def progress(jobs: list[Job], work: str, finished: dict, carry: str | None = None) -> str:
    """Epochs done and left over the jobs, with the time left at the median of the last 5 epochs.

    ``finished``: the summary's jobs, whose run directories may be gone since; ``carry``: the
    carried states of unfinished runs (:func:`save_carry`).
    """
    done = left = 0
    seconds = []
    for job in jobs:
        rows = _run_rows(job, work, carry)
        seconds += [float(r["epoch_seconds"]) for r in rows if r.get("epoch_seconds")]
        if job.name in finished:
            done += job.epochs
            continue
        done += min(len(rows), job.epochs)
        left += max(0, job.epochs - len(rows))
    # The recent speed: earlier epochs may have shared the cores with tests and benchmarks.
    recent = float(np.median(seconds[-5:])) if seconds else 0.0
    eta = (f", about {left * recent / 3600:.1f} h left at {recent:.0f} s per epoch (the last epochs'; "
           "larger models take longer)") if seconds and left else ""
    return f"{done} of {done + left} epochs done{eta}"


def status(s, work: str, summary: dict, carry: str | None = None) -> str:
    """One line per run (finished and committed, epochs done, or not started), then the total."""
    recipe = summary.get("recipe")
    jobs = planned_jobs(s, summary)
    lines = []
    for job in jobs:
        if job.name in summary["jobs"]:
            state = "finished, results in --out"
        else:
            done = min(len(log_rows(os.path.join(work, job.name))), job.epochs)
            carried = epochs_carried(os.path.join(carry, job.name)) if carry else 0
            state = (f"{done} of {job.epochs} epochs" if done else
                     "started, no epoch finished yet" if os.path.isdir(os.path.join(work, job.name)) else "not started")
            if carried:
                state += f" ({carried} carried in --carry{', resumed from there' if carried > done else ''})"
        lines.append(f"{job.phase:>8}  {job.name:<40} {state}")
    if not recipe:
        lines.append("(the later runs are listed once the pilot has chosen the recipe)")
    elif not summary.get("distill"):
        lines.append("(the distillation runs are listed once the distillation pilot has chosen alpha and T)")
    return "\n".join(lines + [f"all: {progress(jobs, work, summary['jobs'], carry)}"])


def train_command(job: Job, s, work: str) -> list[str]:
    """The train.py command of a job (its own data, batch, precision and recipe where it has them)."""
    warmup = job.warmup_epochs
    return ([sys.executable, "train.py", "--preset", job.preset, "--output", os.path.join(work, job.name),
             "--dataset", job.data or s["data"], "--epochs", str(job.epochs), "--batch_size", str(job.batch or s["batch"]),
             "--lr", str(job.lr), "--warmup_epochs", str(int(warmup) if float(warmup).is_integer() else warmup),
             "--mix_prob", str(job.mix_prob), "--val_size", str(s["val_size"]), "--seed", str(job.seed),
             "--precision", job.precision or s["precision"], "--verbose", "2"]
            + distill_flags(job) + (["--gradient_equilibrium"] if job.gradient_equilibrium else []) + list(job.recipe))


def train(job: Job, s, work: str) -> None:
    run_command(train_command(job, s, work))


def distill_flags(job: Job) -> list[str]:
    """train.py's distillation flags of a job (none for the plain recipe, so the runs started
    before the flags existed resume under the same command)."""
    if not job.distill_alpha:
        return []
    return ["--distill_alpha", str(job.distill_alpha), "--distill_temperature", str(job.distill_temperature),
            "--distill_teacher", job.distill_teacher]
