"""The comparison that can decide (issue 17): a recipe pilot, 30-epoch main runs, ablations, a second seed.

    python benchmarks/cifar10_cpu30.py                 # everything, in order; resumable
    python benchmarks/cifar10_cpu30.py --phases pilot  # one phase
    python benchmarks/cifar10_cpu30.py --report_only   # rewrite results.md from --out
    python benchmarks/cifar10_cpu30.py --status        # what is done and left, without training
    python benchmarks/cifar10_cpu30.py --smoke         # tiny presets on the embedded sample (own folders)
    python benchmarks/cifar10_cpu30.py --commit --carry_at 08:25   # and carry the unfinished runs at 08:25

Phases, each a list of train.py runs on the 45,000/5,000 split of the CIFAR-10 JPEG archive:

1. ``pilot``: ``--pilot_preset`` (the baseline, MSDNet, so that no FusionNet lead comes from
   tuning the recipe for FusionNet) for ``--pilot_epochs`` at every peak learning rate of
   ``--pilot_lrs`` and CutMix/MixUp probability of ``--pilot_mix``. Scored on the validation
   split only (mean top-1 over the exits at the last epoch, from log.csv); the test set is
   never read. The best configuration is the recipe of every later phase (``pilot.json``).
2. ``main``: every model of ``--main_presets`` (RANet too once a ``ranet-cifar`` preset exists)
   for ``--epochs``; evaluated on the 10,000 test images, exported (float32, int8) and run
   through the cascade runner.
3. ``ablation``: FusionNet with one contribution removed (and MSDNet with the fusion layer
   added) for ``--ablation_epochs``, next to both main models trained as long.
4. ``seed``: both main models again with ``--seed 1`` for ``--seed_epochs``, so differences
   are read against run-to-run spread as well as against the test set's paired standard error.

Run order: the first main model and the baseline, their second seed, the ablation, and the
other main models (RANet) last, since they cost the most and the claims do not rest on them.
Each finished main or second-seed model is exported (float32, int8) and swept through the
cascade runner at once, while its run directory is there; plots, paired errors and the report
are made from what ``--out`` holds, so they survive a lost ``--work``.

Warmup follows the paper's share (20 of 300 epochs), rounded, at least 1 epoch.

Training is hours per model on 2 CPU cores. Every run resumes from its last finished epoch
when the command is run again, and a finished run is not trained again. Results only (JSON,
CSV, logs, plots, per-image test predictions; no checkpoints) go to ``--out`` as each run
finishes; with ``--commit`` they are committed there and then (``git commit -- OUT CARRY``,
nothing else is touched).

A run can outlast the machine it started on: ``--carry_now`` copies every unfinished run's last
finished epoch (weights and optimizer state, its log; about 25 MB for MSDNet) into ``--carry``
inside the checkout and commits it, and a later invocation whose ``--work`` lacks the run (or
holds fewer epochs) resumes from there. A run's carried state is deleted in the commit of its
results.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tf_fusionnet.console import setup_environment  # noqa: E402  (before TensorFlow loads)

setup_environment()

import csv  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from common import (ROOT, cascade_sweep, interpolate, load_predictions, paired_errors_of, percent as _pct,  # noqa: E402
                    run_command, save_predictions, test_predictions)

PHASES = ("pilot", "main", "ablation", "seed", "distill_pilot", "distill", "seed2")
DISTILL_PHASES = ("distill", "seed2")  # issue 33: three seeds of both models, with and without distillation
ABLATIONS = ("fusionnet-cifar-nofusion", "fusionnet-cifar-msdnetstem", "fusionnet-cifar-msdnettransition",
             "msdnet-cifar-fusion")
BUDGETS_M = (20, 30, 40, 50, 60)

flags.DEFINE_string("data", os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz"), "Dataset.")
flags.DEFINE_list("phases", list(PHASES), "Phases to run, in this order.")
flags.DEFINE_list("main_presets", ["fusionnet-cifar", "msdnet-cifar-anytime"],
                  "Main models; the last is the baseline every difference is taken against.")
flags.DEFINE_integer("epochs", 30, "Epochs of the main runs.")
flags.DEFINE_integer("ablation_epochs", 10, "Epochs of the ablation runs.")
flags.DEFINE_integer("seed_epochs", 30, "Epochs of the second-seed runs.")
flags.DEFINE_string("pilot_preset", "msdnet-cifar-anytime", "Model the recipe is chosen on.")
flags.DEFINE_integer("pilot_epochs", 5, "Epochs of each pilot run (a full schedule of that length).")
flags.DEFINE_list("pilot_lrs", ["0.05", "0.1"], "Peak learning rates (batch 128) the pilot tries.")
flags.DEFINE_list("pilot_mix", ["0", "0.5"], "CutMix/MixUp probabilities the pilot tries.")
flags.DEFINE_list("distill_pilot", ["0.5:1", "0.5:3", "0.8:3"],
                  "alpha:T pairs of exit distillation (teacher: the last exit) the distillation pilot tries on "
                  "--pilot_preset for --ablation_epochs, scored on the validation split like the recipe pilot.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16"],
                  "Number format of every run. Pinned, not train.py's auto: auto would train a model in "
                  "bfloat16 on a session whose CPU has avx512_bf16 and its rival in float32 on one without.")
flags.DEFINE_integer("cascade_images", 0, "Test images for the cascade sweep (0: all).")
flags.DEFINE_string("work", os.path.join(ROOT, "..", "cifar10_cpu30-work"),
                    "Run directories and bundles (outside the checkout, so a fresh checkout keeps them).")
flags.DEFINE_string("out", os.path.join(ROOT, "benchmarks", "results", "cifar10_cpu30"), "Results folder.")
flags.DEFINE_string("carry", os.path.join(ROOT, "benchmarks", "carry", "cifar10_cpu30"),
                    "Resume state of unfinished runs kept in the checkout (see --carry_now).")
flags.DEFINE_bool("carry_now", False, "Only copy every unfinished run's last finished epoch into --carry (and "
                  "commit it with --commit), then exit; safe while another invocation trains.")
flags.DEFINE_string("carry_at", "", "HH:MM (local time): also carry, as --carry_now does, once at that time "
                    "(say 15 minutes before the machine goes), while training goes on.")
flags.DEFINE_bool("commit", False, "git commit --out and --carry after each finished run.")
flags.DEFINE_bool("smoke", False, "Tiny presets on the embedded sample, 1 epoch per run.")
flags.DEFINE_bool("report_only", False, "Only rewrite results.md from --out.")
flags.DEFINE_bool("status", False, "Only print every run's epochs done and the time left, then exit.")
FLAGS = flags.FLAGS


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

    @property
    def warmup_epochs(self) -> int:
        return max(1, round(self.epochs * 20 / 300))


def _settings():
    pilot = dict(pilot_lrs=list(FLAGS.pilot_lrs), pilot_mix=list(FLAGS.pilot_mix),
                 distill_pilot=[tuple(float(v) for v in pair.split(":")) for pair in FLAGS.distill_pilot])
    if FLAGS.smoke:
        return dict(**pilot, data="sample", val_size=50, batch=32, precision=FLAGS.precision, main=["fusionnet-tiny", "ranet-tiny", "msdnet-tiny"],
                    ablations=(),
                    epochs=1, ablation_epochs=1, seed_epochs=1, pilot_epochs=1, pilot_preset="msdnet-tiny")
    from tf_fusionnet.presets import PRESETS

    main = list(FLAGS.main_presets)
    if "ranet-cifar" in PRESETS and "ranet-cifar" not in main:
        main.insert(-1, "ranet-cifar")
    return dict(**pilot, data=os.path.abspath(FLAGS.data), val_size=5000, batch=FLAGS.batch_size, main=main,
                precision=FLAGS.precision,
                ablations=ABLATIONS, epochs=FLAGS.epochs, ablation_epochs=FLAGS.ablation_epochs,
                seed_epochs=FLAGS.seed_epochs, pilot_epochs=FLAGS.pilot_epochs, pilot_preset=FLAGS.pilot_preset)


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
    the plain recipe: seeds 0 and 1 are the main and seed phases), then distilled seeds 1 and 2."""
    pair = s["main"][:1] + s["main"][-1:]
    e = s["epochs"]
    a, t, teacher = distill["alpha"], distill["temperature"], distill["teacher"]
    def distilled(seed):
        return [Job(f"{p}-distill-{e}ep-seed{seed}", "distill", p, e, seed, lr, mix, a, t, teacher) for p in pair]
    return distilled(0) + [Job(f"{p}-{e}ep-seed2", "seed2", p, e, 2, lr, mix) for p in pair] + distilled(1) + distilled(2)


def planned_jobs(s, summary: dict) -> list[Job]:
    """Every job the summary's choices so far determine (the later ones appear once chosen)."""
    recipe = summary.get("recipe")
    if not recipe:
        return pilot_jobs(s)
    lr, mix = recipe["lr"], recipe["mix_prob"]
    jobs = pilot_jobs(s) + later_jobs(s, lr, mix) + distill_pilot_jobs(s, lr, mix)
    if summary.get("distill"):
        jobs += distill_jobs(s, lr, mix, summary["distill"])
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


def _log_rows(run: str) -> list[dict]:
    path = os.path.join(run, "log.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def pilot_score(rows: list[dict]) -> dict:
    """Validation top-1 of the last epoch: mean over exits and last exit (no test data)."""
    last = rows[-1]
    accs = [float(last[k]) for k in sorted((k for k in last if k.startswith("val_exit_") and k.endswith("_accuracy")),
                                            key=lambda k: int(k.split("_")[2]))]
    return {"val_top1_mean_over_exits": float(np.mean(accs)), "val_top1_last_exit": accs[-1],
            "val_top1_per_exit": accs}


def _run_rows(job: Job, work: str, carry: str | None) -> list[dict]:
    """The log of the job's run in ``work``, or of its carried state where that holds more epochs."""
    rows = _log_rows(os.path.join(work, job.name))
    carried = _log_rows(os.path.join(carry, job.name)) if carry else []
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
            done = min(len(_log_rows(os.path.join(work, job.name))), job.epochs)
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


# What resumes a run: train.py's backup (weights and optimizer state, the epoch), its log and
# settings, and the best epoch's record. best.keras itself stays behind (it would double the
# size): a resumed run writes it again when it beats the record, and until then
# ``evaluate.py --checkpoint best`` says it is missing instead of serving a later epoch.
# model.keras goes only with a run whose last epoch is done (evaluation reads it).
CARRIED = ("config.json", "split.json", "preprocessing.json", "log.csv", "best.keras.json",
           os.path.join("backup", "latest.weights.h5"), os.path.join("backup", "training_metadata.json"))


def epochs_carried(run: str) -> int:
    """Epochs a run folder's backup marks as done (0 without one)."""
    try:
        with open(os.path.join(run, "backup", "training_metadata.json")) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def save_carry(run: str, dest: str, epochs: int, timeout_s: float = 1800.0, poll_s: float = 10.0) -> int:
    """Copies ``run``'s last finished epoch to ``dest`` (replaced whole); returns its epochs.

    Safe while train.py trains the run: an epoch's end writes the log row, then the models,
    then the backup, so a copy is kept only if the log and the backup named the same epoch
    before and after it; otherwise it waits for the epoch's end to complete and tries again.
    ``epochs``: the run's length (its model.keras goes too once that many are done).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        before = (epochs_carried(run), len(_log_rows(run)))
        if before[0] and before[0] == before[1]:
            tmp = dest + ".partial"
            shutil.rmtree(tmp, ignore_errors=True)
            names = CARRIED + (("model.keras",) if before[0] >= epochs else ())
            for name in names:
                if os.path.exists(os.path.join(run, name)):
                    os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
                    shutil.copy2(os.path.join(run, name), os.path.join(tmp, name))
            if (epochs_carried(run), len(_log_rows(run))) == before:
                shutil.rmtree(dest, ignore_errors=True)
                os.replace(tmp, dest)
                return before[0]
            shutil.rmtree(tmp)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{run}: its log ({before[1]} epochs) and backup ({before[0]}) did not agree "
                               f"for {timeout_s:.0f} s; nothing carried")
        time.sleep(poll_s)


def _read(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read()


def restore_carry(carried: str, run: str) -> int:
    """Puts a carried state into ``run`` when it holds more finished epochs; returns the epochs restored (0: none).

    Only the carried files are replaced; call it while no train.py works on ``run``.
    """
    have, ahead = epochs_carried(run), epochs_carried(carried)
    if ahead <= have:
        return 0
    # The run's own models are of an earlier epoch than the carried state: never served as its.
    best_record = os.path.join(run, "best.keras.json")
    old_best = _read(best_record)
    for root, _, files in os.walk(carried):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), carried)
            target = os.path.join(run, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.join(root, name), target)
    stale = ["model.keras"] if not os.path.exists(os.path.join(carried, "model.keras")) else []
    if old_best is None or _read(best_record) != old_best:
        stale.append("best.keras")
    for name in stale:
        if os.path.exists(os.path.join(run, name)):
            os.remove(os.path.join(run, name))
    return ahead


def train(job: Job, s, work: str) -> None:
    run_command([sys.executable, "train.py", "--preset", job.preset, "--output", os.path.join(work, job.name),
                 "--dataset", s["data"], "--epochs", str(job.epochs), "--batch_size", str(s["batch"]),
                 "--lr", str(job.lr), "--warmup_epochs", str(job.warmup_epochs), "--mix_prob", str(job.mix_prob),
                 "--val_size", str(s["val_size"]), "--seed", str(job.seed), "--precision", s["precision"],
                 "--verbose", "2"] + distill_flags(job))


def distill_flags(job: Job) -> list[str]:
    """train.py's distillation flags of a job (none for the plain recipe, so the runs started
    before the flags existed resume under the same command)."""
    if not job.distill_alpha:
        return []
    return ["--distill_alpha", str(job.distill_alpha), "--distill_temperature", str(job.distill_temperature),
            "--distill_teacher", job.distill_teacher]


PREDICTIONS = "test_predictions.npz"
LOGITS = "logits.npz"  # per-image validation and test logits (float32), so budgets can be refitted


def collect(job: Job, work: str, out: str) -> dict:
    """Copies a finished run's results to out/NAME/ and returns its summary entry."""
    run = os.path.join(work, job.name)
    dest = os.path.join(out, job.name)
    os.makedirs(dest, exist_ok=True)
    shutil.copy(os.path.join(run, "log.csv"), os.path.join(dest, "log.csv"))
    from tf_fusionnet.utils import machine_info

    rows = _log_rows(run)
    # summary.json's top-level "machine" is the latest invocation's; a run's seconds need their own
    # (a carried run may have begun elsewhere: this is the machine it finished on).
    entry = {**dataclasses.asdict(job), "warmup_epochs": job.warmup_epochs,
             "train_seconds": sum(float(r["epoch_seconds"]) for r in rows if r.get("epoch_seconds")),
             "finished_on": machine_info()}
    if job.phase in ("pilot", "distill_pilot"):
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


def _git(args: list[str], cwd: str = ROOT, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, **kwargs)


def _commit(paths: list[str], message: str, repo: str = ROOT) -> None:
    """Commits ``paths`` (additions and deletions) and nothing else; a path with no file on disk,
    in the index or in HEAD (an empty folder, say: the carry once its last run has finished) is
    skipped, since git refuses the whole commit over it. Retries while another invocation holds
    git's index lock."""
    def known_to_git(path: str) -> bool:
        return bool(_git(["ls-files", "--", path], repo).stdout.strip()
                    or _git(["ls-tree", "-r", "--name-only", "HEAD", "--", path], repo).stdout.strip())

    paths = [p for p in paths if os.path.exists(p) or known_to_git(p)]  # deleted since HEAD: stage it
    for attempt in range(10):
        added = _git(["add", "-A", "--", *paths], repo)
        known = [p for p in paths if known_to_git(p)]
        if added.returncode == 0 and not known:
            print(f"nothing to commit in {', '.join(paths) or 'no path'}: {message}", flush=True)
            return
        done = _git(["commit", "-q", "-m", message, "--", *known], repo) if added.returncode == 0 else added
        if done.returncode == 0 or "index.lock" not in done.stderr:
            break
        time.sleep(5)
    print(f"committed {', '.join(os.path.relpath(p, repo) for p in known)}: {message}" if done.returncode == 0
          else f"nothing committed ({(done.stdout + done.stderr).strip()})", flush=True)


def _load_summary(out: str) -> dict:
    path = os.path.join(out, "summary.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"jobs": {}}


def seconds_until(hh_mm: str, now: float | None = None) -> float:
    """Seconds from ``now`` (default: the time) to the next HH:MM, local time."""
    import datetime

    try:
        hour, minute = (int(x) for x in hh_mm.split(":"))
        at = datetime.time(hour, minute)
    except ValueError:
        raise SystemExit(f"error: --carry_at {hh_mm!r}: give a time as HH:MM") from None
    current = datetime.datetime.fromtimestamp(time.time() if now is None else now)
    target = datetime.datetime.combine(current.date(), at)
    if target <= current:
        target += datetime.timedelta(days=1)
    return (target - current).total_seconds()


def carry_now(jobs: list[Job], work: str, carry: str, finished: dict) -> list[str]:
    """Carries every unfinished run of ``jobs`` that has a finished epoch; returns what it did."""
    done = []
    for job in jobs:
        run = os.path.join(work, job.name)
        if job.name in finished or not epochs_carried(run):
            continue
        if epochs_carried(run) <= epochs_carried(os.path.join(carry, job.name)):
            done.append(f"{job.name}: {epochs_carried(run)} epochs, carried already")
            continue
        done.append(f"{job.name}: {save_carry(run, os.path.join(carry, job.name), job.epochs)} epochs carried")
    return done


def main(argv):
    from tf_fusionnet.utils import atomic_write_json, git_commit, library_versions, machine_info

    out, work, carry = os.path.abspath(FLAGS.out), os.path.abspath(FLAGS.work), os.path.abspath(FLAGS.carry)
    if FLAGS.smoke:  # never into the real runs and results, unless asked for explicitly
        if not FLAGS["work"].present:
            work += "-smoke"
        if not FLAGS["out"].present:
            out = os.path.join(work, "results")
        if not FLAGS["carry"].present:
            carry = os.path.join(work, "carry")
    if FLAGS.report_only:
        print(write_report(out))
        return 0
    if FLAGS.status:
        print(status(_settings(), work, _load_summary(out), carry))
        return 0
    unknown = sorted(set(FLAGS.phases) - set(PHASES))
    if unknown:
        raise SystemExit(f"error: --phases: unknown {', '.join(unknown)} (choose from {', '.join(PHASES)})")
    s = _settings()
    summary = _load_summary(out)

    def carry_and_commit() -> None:
        lines = carry_now(planned_jobs(s, summary), work, carry, summary["jobs"])
        print("\n".join(lines) or "no unfinished run has a finished epoch: nothing to carry", flush=True)
        if FLAGS.commit and lines:
            _commit([carry], "cifar10_cpu30: carry the unfinished runs' last finished epochs into the checkout "
                             "(" + "; ".join(lines) + ")")

    if FLAGS.carry_now:
        carry_and_commit()
        return 0
    if FLAGS.carry_at:
        import threading

        delay = seconds_until(FLAGS.carry_at)
        print(f"carrying the unfinished runs in {delay / 60:.0f} min ({FLAGS.carry_at})", flush=True)
        timer = threading.Timer(delay, carry_and_commit)
        timer.daemon = True  # the driver need not wait for it once its runs are done
        timer.start()
    os.makedirs(out, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    summary.update({"command": "python " + " ".join(sys.argv), "versions": library_versions(),
                    "machine": machine_info(), "data": s["data"], "batch_size": s["batch"], "precision": s["precision"],
                    "candidate_preset": s["main"][0], "baseline_preset": s["main"][-1]})

    def save(message: str | None = None) -> None:
        summary["git_commit"] = git_commit()
        atomic_write_json(os.path.join(out, "summary.json"), summary)
        write_report(out)
        if FLAGS.commit and message:
            _commit([out, carry], message)

    def run_job(job: Job, evaluate: bool) -> None:
        restored = restore_carry(os.path.join(carry, job.name), os.path.join(work, job.name))
        if restored:
            print(f"{job.name}: resuming from the state carried in {carry} ({restored} epochs)", flush=True)
        train(job, s, work)
        if evaluate:
            run_command([sys.executable, "evaluate.py", "--run", os.path.join(work, job.name)])
        summary["jobs"][job.name] = collect(job, work, out)
        shutil.rmtree(os.path.join(carry, job.name), ignore_errors=True)
        save(f"cifar10_cpu30: {job.phase} run {job.name} finished")

    pilots = pilot_jobs(s)
    choice = summary.get("recipe")
    if "pilot" in FLAGS.phases:
        for i, job in enumerate(pilots):
            print(f"[pilot {i + 1}/{len(pilots)}] {job.name}: {progress(pilots, work, summary['jobs'], carry)}",
                  flush=True)
            if job.name not in summary["jobs"]:
                run_job(job, evaluate=False)
        best = max(pilots, key=lambda j: summary["jobs"][j.name]["val_top1_mean_over_exits"])
        choice = {"lr": best.lr, "mix_prob": best.mix_prob, "chosen_by": best.name}
        summary["recipe"] = choice
        save()
    if not choice:
        raise SystemExit("error: no recipe chosen yet: run the pilot phase first (--phases pilot)")
    jobs = [j for j in later_jobs(s, choice["lr"], choice["mix_prob"]) if j.phase in FLAGS.phases]
    for phase, group in run_groups(jobs):
        for job in group:
            print(f"[{phase} {jobs.index(job) + 1}/{len(jobs)}] {job.name}: "
                  f"{progress(jobs, work, summary['jobs'], carry)}", flush=True)
            if job.name not in summary["jobs"]:
                run_job(job, evaluate=True)
            else:
                entry = summary["jobs"][job.name]
                if "test_images" not in entry:  # finished before the count was kept
                    entry.update(budgeted_entry(os.path.join(out, job.name, "budgeted.json")))
                backfill_predictions(job, work, out)
            if job.phase in ("main", "seed") and model_cascade(job, s, work, summary):
                save(f"cifar10_cpu30: cascade sweep of {job.name}'s float32 and int8 bundles")
        # Every finished run of the phase so far (the main phase comes in two parts), each
        # against the phase's baseline, which is in its first part.
        added = pair_phase([j for j in jobs if j.phase == phase and j.name in summary["jobs"]], out,
                           s["main"][-1], summary.setdefault("paired", {}))
        # A restart walks the finished phases again: commit only when something new was paired.
        save(f"cifar10_cpu30: paired errors of {', '.join(added)}" if added else None)

    # Issue 33: the distillation pilot (validation only), then three seeds of both models with
    # and without distillation. Each run's validation and test logits go to --out (LOGITS).
    dpilots = distill_pilot_jobs(s, choice["lr"], choice["mix_prob"])
    if "distill_pilot" in FLAGS.phases:
        for i, job in enumerate(dpilots):
            print(f"[distill_pilot {i + 1}/{len(dpilots)}] {job.name}: "
                  f"{progress(dpilots, work, summary['jobs'], carry)}", flush=True)
            if job.name not in summary["jobs"]:
                run_job(job, evaluate=False)
        reference = next((j for j in summary["jobs"].values()
                          if j["phase"] == "ablation" and j["preset"] == s["pilot_preset"]), None)
        if reference is not None and "val_top1_mean_over_exits" not in reference:
            reference.update(pilot_score(_log_rows(os.path.join(out, reference["name"]))))
        summary["distill"] = choose_distillation(dpilots, reference, summary["jobs"])
        save("cifar10_cpu30: the distillation pilot chose alpha and T on the validation split")
    distill = summary.get("distill")
    djobs = [j for j in distill_jobs(s, choice["lr"], choice["mix_prob"], distill)
             if j.phase in FLAGS.phases] if distill else []
    if not distill and any(p in FLAGS.phases for p in DISTILL_PHASES):
        raise SystemExit("error: no distillation chosen yet: run the distillation pilot first (--phases distill_pilot)")
    for i, job in enumerate(djobs):
        print(f"[{job.phase} {i + 1}/{len(djobs)}] {job.name}: {progress(djobs, work, summary['jobs'], carry)}",
              flush=True)
        if job.name not in summary["jobs"]:
            run_job(job, evaluate=True)
    print(write_report(out))
    return 0


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
    n = FLAGS.cascade_images or len(test.test_labels)
    from tf_fusionnet.utils import machine_info

    measured_on = summary.setdefault("cascade_measured_on", {})
    for precision in todo:
        cascade[f"{job.name} {precision}"] = cascade_sweep(bundle, precision, test.test_images[:n],
                                                           test.test_labels[:n])
        measured_on[f"{job.name} {precision}"] = {**machine_info(), "at": _utc_now()}
    return True


def _utc_now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


MAIN_PLOTS = ("anytime.png", "budgeted.png", "cascade_ms.png")


def plot_main(out: str, summary: dict) -> list[str]:
    """out/anytime.png, budgeted.png (main and second-seed models) and cascade_ms.png, drawn
    from summary.json alone; returns the names drawn."""
    from tf_fusionnet.evaluation.plots import plot_curves

    entries = [j for j in summary["jobs"].values() if j["phase"] in ("main", "seed")]
    presets = list(dict.fromkeys(j["preset"] for j in entries))
    # One colour per model; its second seed dashed.
    styles = [{"color": presets.index(j["preset"]), "linestyle": "--" if j["seed"] else "-"} for j in entries]
    drawn = []
    if entries:
        plot_curves(os.path.join(out, MAIN_PLOTS[0]),
                    [{"label": j["name"], "x": _curve(j)[0], "y": _curve(j)[1], **st} for j, st in zip(entries, styles)],
                    "Anytime prediction (test)")
        plot_curves(os.path.join(out, MAIN_PLOTS[1]),
                    [{"label": j["name"], "x": [p["avg_macs"] for p in j["budgeted"]],
                      "y": [p["top1"] for p in j["budgeted"]], "marker": ".", **st} for j, st in zip(entries, styles)],
                    "Budgeted batch classification (test)", xlabel="average MACs per image (M)")
        drawn += MAIN_PLOTS[:2]
    if summary.get("cascade"):
        plot_curves(os.path.join(out, MAIN_PLOTS[2]),
                    [{"label": k, "x": [p["mean_ms"] for p in v], "y": [p["top1"] for p in v]}
                     for k, v in summary["cascade"].items()],
                    "Cascade on device (1 thread, batch 1)", xlabel="mean ms per image", x_scale=1.0)
        drawn.append(MAIN_PLOTS[2])
    return drawn


def _se_range(rows) -> str:
    if not rows:
        return "-"
    errors = [100 * r["standard_error"] for r in rows]
    return f"{min(errors):.2f}-{max(errors):.2f}"


def _curve(entry: dict) -> tuple[list, list]:
    return [e["macs"] for e in entry["anytime"]], [e["top1"] for e in entry["anytime"]]


def _budget_curve(entry: dict) -> tuple[list, list]:
    """Budgeted points plus the two ends (only exit 1; every image to the last exit)."""
    ends = [entry["anytime"][0], entry["anytime"][-1]]
    return ([p["avg_macs"] for p in entry["budgeted"]] + [e["macs"] for e in ends],
            [p["top1"] for p in entry["budgeted"]] + [e["top1"] for e in ends])


def verdict(difference: float | None, noise: float) -> str:
    if difference is None:
        return "not measured"
    if abs(difference) <= noise:
        return "within noise"
    return "supported" if difference > 0 else "not supported"


def write_report(out: str) -> str:
    """out/results.md from out/summary.json: pilot, anytime and budgeted tables, ablation, noise, verdicts."""
    from tf_fusionnet.utils import atomic_write_text

    summary = _load_summary(out)
    jobs = summary["jobs"]
    for name, entry in jobs.items():  # entries written before the test-set size was kept
        path = os.path.join(out, name, "budgeted.json")
        if entry.get("phase") != "pilot" and "test_images" not in entry and os.path.exists(path):
            entry["test_images"] = budgeted_entry(path)["test_images"]
    drawn = plot_main(out, summary)
    named = [MODEL_NAMES.get(j["preset"].split("-")[0], j["preset"]) for j in jobs.values() if j["phase"] == "main"]
    title = f"{named[0]} against {' and '.join(named[1:])}" if len(named) > 1 else "FusionNet against MSDNet"
    lines = [f"# CIFAR-10, 30 epochs: {title} (issue 17)", "",
             "Written by `benchmarks/cifar10_cpu30.py` from `summary.json`; test top-1 in %, MACs per image.", ""]
    pilots = [j for j in jobs.values() if j["phase"] == "pilot"]
    if pilots:
        lines += ["## Pilot (validation split only)", "",
                  "| run | peak lr | mix prob | epochs | val top-1 mean over exits | val top-1 last exit |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {j['name']} | {j['lr']} | {j['mix_prob']} | {j['epochs']} | "
                  f"{_pct(j['val_top1_mean_over_exits'])} | {_pct(j['val_top1_last_exit'])} |" for j in pilots]
        if summary.get("recipe"):
            r = summary["recipe"]
            lines += ["", f"Chosen: peak lr {r['lr']}, mix prob {r['mix_prob']} ({r['chosen_by']})."]
        lines.append("")
    for phase, title in (("main", "Main comparison"), ("ablation", "Ablation"), ("seed", "Second seed")):
        entries = [j for j in jobs.values() if j["phase"] == phase]
        if not entries:
            continue
        baseline = next((j for j in entries if j["preset"] == summary.get("baseline_preset")), entries[-1])
        paired = summary.get("paired", {})
        lines += [f"## {title}", "", f"Differences: against `{baseline['name']}`'s curve interpolated at each "
                  "model's MACs (never extrapolated).", "",
                  "| run | epochs | exit MMACs | test top-1 per exit | minus baseline at equal MACs | "
                  + " | ".join(f"budgeted {b}M" for b in BUDGETS_M) + " | paired SE |",
                  "|---|---|---|---|---|" + "---|" * (len(BUDGETS_M) + 1)]
        bx, by = _curve(baseline)
        for j in entries:
            xs, ys = _curve(j)
            deltas = [interpolate(bx, by, x) for x in xs]
            delta_text = ", ".join("-" if d is None else f"{100 * (y - d):+.2f}" for y, d in zip(ys, deltas))
            budget = [interpolate(*_budget_curve(j), b * 1e6) for b in BUDGETS_M]
            lines.append(f"| {j['name']} | {j['epochs']} | {', '.join(f'{x / 1e6:.1f}' for x in xs)} | "
                         f"{', '.join(_pct(y) for y in ys)} | {delta_text} | " + " | ".join(_pct(b) for b in budget)
                         + f" | {_se_range(paired.get(j['name']))} |")
        unpaired = [j["name"] for j in entries if j is not baseline and not paired.get(j["name"])]
        if unpaired:
            lines += ["", f"Paired SE \"-\": {', '.join(f'`{n}`' for n in unpaired)} kept no per-image test "
                      "predictions (finished before the driver kept them, run directory gone since, or its "
                      "baseline has none), so it cannot be paired; the noise below uses the pairs that can."]
        lines.append("")
        if phase == "main":
            lines += [f"![{name[:-4]}]({name})" for name in drawn if name in MAIN_PLOTS[:2]] + [""]
        if phase == "ablation" and len(entries) > 1:
            plot_ablation(out, entries)
            lines += [f"![ablation, anytime]({ABLATION_PLOT})", ""]
    cascade = summary.get("cascade", {})
    if cascade:
        measured_on = summary.get("cascade_measured_on", {})
        lines += ["## Cascade runner on the exported bundles", "",
                  "Mean ms per image (1 thread, batch 1), interpolated at the average MACs the runner measured:", "",
                  "| bundle | " + " | ".join(f"{b}M" for b in BUDGETS_M) + " | top-1 at the largest budget | measured on |",
                  "|---|" + "---|" * (len(BUDGETS_M) + 2)]
        for key, points in cascade.items():
            ms = [interpolate([p["mean_macs"] for p in points], [p["mean_ms"] for p in points], b * 1e6)
                  for b in BUDGETS_M]
            lines.append(f"| {key} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in ms)
                         + f" | {_pct(points[-1]['top1'])} | {_measured_on(measured_on.get(key))} |")
        lines += ["", CASCADE_TIMING_NOTE, "", f"![cascade]({MAIN_PLOTS[2]})", ""]
    lines += _noise_and_verdicts(summary)
    text = "\n".join(lines) + "\n"
    atomic_write_text(os.path.join(out, "results.md"), text)
    return text


# Each model's sweep runs as soon as it finishes, so the rows come from different sessions.
CASCADE_TIMING_NOTE = ("Top-1 compares across rows; milliseconds only between rows measured in one "
                       "session: machines of one CPU name differ in speed from session to session.")


def _measured_on(info: dict | None) -> str:
    """'CPU (VNNI or not), when' for a cascade row; '-' where the sweep predates the record."""
    if not info:
        return "-"
    vnni = "VNNI" if "avx512_vnni" in info.get("simd_flags", []) else "no VNNI"
    return f"{info.get('cpu_model', '?')} ({vnni}), {info.get('at', '?')}"


ABLATION_PLOT = "ablation_anytime.png"


def plot_ablation(out: str, entries: list[dict]) -> None:
    """out/ablation_anytime.png: every ablation run's test top-1 per exit against its MACs.

    Drawn from summary.json, so ``--report_only`` redraws it after the run directories are gone.
    """
    from tf_fusionnet.evaluation.plots import plot_curves

    plot_curves(os.path.join(out, ABLATION_PLOT),
                [dict(zip(("label", "x", "y"), (j["name"], *_curve(j)))) for j in entries],
                f"Ablation, anytime (test, {entries[0]['epochs']} epochs)")


def _noise_and_verdicts(summary: dict) -> list[str]:
    jobs = summary["jobs"]
    main = [j for j in jobs.values() if j["phase"] == "main"]
    if len(main) < 2:
        return []
    # base: MSDNet, the ablations' reference. Not the last main run: RANet finishes after it.
    base = next((j for j in main if j["preset"] == summary.get("baseline_preset")), main[-1])
    others = [j for j in main if j is not base]
    cand = next((j for j in others if j["preset"] == summary.get("candidate_preset")), others[0])
    errors = [p["standard_error"] for name, rows in summary.get("paired", {}).items()
              if jobs.get(name, {}).get("phase") in ("main", "seed") for p in rows]
    spreads = []
    for seeded in (j for j in jobs.values() if j["phase"] == "seed"):
        first = next((j for j in jobs.values() if j["phase"] in ("main", "ablation")
                      and j["preset"] == seeded["preset"] and j["seed"] == 0 and j["epochs"] == seeded["epochs"]), None)
        if first:
            spreads += [abs(a["top1"] - b["top1"]) for a, b in zip(first["anytime"], seeded["anytime"])]
    bound = [] if errors else unpaired_bounds(cand, base)
    noise = 2 * max(errors or bound or [0.0])
    if spreads:
        noise = max(noise, max(spreads))
    if errors:
        error_line = f"{100 * min(errors):.2f} to {100 * max(errors):.2f} points."
    elif bound:
        error_line = (f"not computed yet (no pair kept per-image predictions). In its place, the unpaired bound "
                      f"sqrt(p_a(1 - p_a)/n + p_b(1 - p_b)/n) of `{cand['name']}` against `{base['name']}`, exit by "
                      f"exit: {100 * min(bound):.2f} to {100 * max(bound):.2f} points. It is larger than the paired "
                      "error when the two models err on the same images, as they do: in the 10-epoch benchmark "
                      "the paired error was 0.33-0.35 points against an unpaired 0.55-0.57.")
    else:
        error_line = "not computed yet."
    lines = ["## Noise", "",
             "- Paired standard error of a same-exit test top-1 difference: " + error_line,
             "- Run-to-run spread (seed 0 against seed 1, same epochs, per exit): "
             + (f"up to {100 * max(spreads):.2f} points." if spreads else "not measured yet."),
             f"- A difference is read as real only beyond {100 * noise:.2f} points (the larger of two standard "
             "errors and the largest seed spread).", "", "## The paper's claims", ""]
    if not noise:
        return lines + ["No verdict yet: no measure of the noise (paired errors, test-set size or second seed).", ""]
    for baseline in [base] + [j for j in main if j is not base and j is not cand]:
        lines += _claims_against(cand, baseline, noise)
    means = {}
    for model in (cand, base):
        runs = [model] + [j for j in jobs.values() if j["phase"] == "seed" and j["preset"] == model["preset"]
                          and j["epochs"] == model["epochs"]]
        if len(runs) > 1:
            means[model["preset"]] = seed_mean(runs)
    if len(means) == 2:
        c, b = means[cand["preset"]], means[base["preset"]]
        lines += [f"Mean of seeds {', '.join(str(s) for s in c['seeds'])} of each model (every seed's difference "
                  "above and in the seed table; the same threshold, although the mean of two runs varies less "
                  "than one):", ""]
        lines += _claims_against(c, b, noise)
    return lines + _ablation_verdicts(jobs, cand, base, noise) + [""]


def seed_mean(runs: list[dict]) -> dict:
    """One entry for several seeds of one preset: per-exit test top-1 averaged (the exits cost the
    same MACs in every seed) and budgeted top-1 averaged at each of ``BUDGETS_M`` (each run's
    budgeted curve interpolated there first, since their thresholds land at different costs)."""
    anytime = [{"exit": e[0]["exit"], "macs": e[0]["macs"], "top1": float(np.mean([x["top1"] for x in e]))}
               for e in zip(*(r["anytime"] for r in runs))]
    budgeted = []
    for b in BUDGETS_M:
        points = [interpolate(*_budget_curve(r), b * 1e6) for r in runs]
        if all(p is not None for p in points):
            budgeted.append({"avg_macs": b * 1e6, "top1": float(np.mean(points))})
    return {"name": f"mean of {', '.join(r['name'] for r in runs)}", "preset": runs[0]["preset"],
            "seeds": [r["seed"] for r in runs], "anytime": anytime, "budgeted": budgeted}


def unpaired_bounds(a: dict, b: dict) -> list[float]:
    """Per same-numbered exit, the standard error of a - b as if the two were tested on
    independent test sets of the same size (empty without ``test_images``)."""
    n_a, n_b = a.get("test_images"), b.get("test_images")
    if not (n_a and n_b):
        return []
    return [float(np.sqrt(x["top1"] * (1 - x["top1"]) / n_a + y["top1"] * (1 - y["top1"]) / n_b))
            for x, y in zip(a["anytime"], b["anytime"])]


# Each ablation preset removes one contribution from its reference (or adds the fusion layer to
# MSDNet); the contribution's gain is the reference minus the ablation at equal MACs.
CONTRIBUTIONS = (
    ("the fusion layer", "fusionnet-cifar-nofusion", "full"),
    ("the efficient stem (with the width it pays for)", "fusionnet-cifar-msdnetstem", "full"),
    ("the paper's transition", "fusionnet-cifar-msdnettransition", "full"),
    ("the fusion layer added to MSDNet", "msdnet-cifar-fusion", "msdnet"),
)
# The paper: "each of the two contributions (the fusion layer and the stem layer) result in
# performance gains of the same order of magnitude". Read as: both gains beyond noise and the
# larger at most this many times the smaller (their ratio rounds to 10^0 on a log scale).
SAME_ORDER_FACTOR = 3.0


def contribution_gain(ablation: dict, reference: dict, removes: bool = True) -> tuple[float, int] | None:
    """Mean top-1 gain a contribution brings at equal MACs, and over how many exits.

    Read at the ablation's exits that lie inside the reference's cost range (the reference
    curve interpolated, never extrapolated). ``removes``: the ablation lacks the contribution
    (gain = reference - ablation); otherwise it adds it (gain = ablation - reference).
    """
    ref = _curve(reference)
    at_ref = [(y, interpolate(*ref, x)) for x, y in zip(*_curve(ablation))]
    deltas = [y - r for y, r in at_ref if r is not None]
    if not deltas:
        return None
    mean = float(np.mean(deltas))
    return (-mean if removes else mean), len(deltas)


def same_order_verdict(gain_a: float | None, gain_b: float | None, noise: float,
                       names: tuple[str, str] = ("the first", "the second")) -> str:
    """Verdict on "both contributions gain, by the same order of magnitude"."""
    if gain_a is None or gain_b is None:
        return "not measured"
    gains = dict(zip(names, (gain_a, gain_b)))
    losing = [n for n, g in gains.items() if g < -noise]
    if losing:
        return f"not supported ({' and '.join(losing)} costs accuracy beyond noise)"
    unclear = [n for n, g in gains.items() if g <= noise]
    if unclear:
        return f"within noise ({' and '.join(unclear)}: gain not beyond {100 * noise:.2f} points)"
    ratio = max(gain_a, gain_b) / min(gain_a, gain_b)
    if ratio <= SAME_ORDER_FACTOR:
        return f"supported (ratio {ratio:.1f})"
    return f"not supported (one gain is {ratio:.1f}x the other)"


def _ablation_verdicts(jobs: dict, cand: dict, base: dict, noise: float) -> list[str]:
    runs = {j["preset"]: j for j in jobs.values() if j["phase"] == "ablation"}
    full, short_base = runs.get(cand["preset"]), runs.get(base["preset"])
    if not (full and short_base):
        return []
    refs = {"full": full, "msdnet": short_base}
    lines = [f"Ablation ({full['epochs']} epochs; gain = the model with the contribution minus the model "
             "without it, at equal MACs, mean over the exits inside the reference's cost range):", ""]
    gains = {}
    for what, preset, ref in CONTRIBUTIONS:
        if preset not in runs:
            continue
        measured = contribution_gain(runs[preset], refs[ref], removes=ref == "full")
        if measured is None:
            continue
        gain, n = measured
        gains[preset] = gain
        against = f"`{preset}` against `{refs[ref]['name']}`"
        lines.append(f"- Gain of {what} ({against}): {100 * gain:+.2f} points over {n} exits: "
                     f"{verdict(gain, noise)}.")
    lines.append("- The fusion layer and the efficient stem give gains of the same order of magnitude "
                 f"(the larger at most {SAME_ORDER_FACTOR:g}x the smaller, both beyond noise): "
                 + same_order_verdict(gains.get("fusionnet-cifar-nofusion"), gains.get("fusionnet-cifar-msdnetstem"),
                                      noise, ("the fusion layer", "the stem")) + ".")
    # The fusion layer's gain has two readings (taken out of FusionNet, put into MSDNet) and
    # they need not agree; the claim is read on both rather than on the kinder one.
    if "msdnet-cifar-fusion" in gains:
        lines.append("- The same, with the fusion layer's gain read on MSDNet (`msdnet-cifar-fusion`): "
                     + same_order_verdict(gains["msdnet-cifar-fusion"], gains.get("fusionnet-cifar-msdnetstem"),
                                          noise, ("the fusion layer", "the stem")) + ".")
    return lines


# What the paper claims of FusionNet's last exit against each baseline's (CIFAR-10, anytime):
# "32% fewer FLOPs than RANet's 93.8% last classifier, and 15% fewer FLOPs than MSDNet's 93.6%".
CHEAPER_THAN = {"msdnet": 0.15, "ranet": 0.32}
MODEL_NAMES = {"fusionnet": "FusionNet", "msdnet": "MSDNet", "ranet": "RANet"}  # by preset prefix


def _claims_against(cand: dict, base: dict, noise: float) -> list[str]:
    """Verdicts on the paper's claims of ``cand`` against one baseline (MSDNet or RANet)."""
    family = "ranet" if base["preset"].startswith("ranet") else "msdnet"
    name = MODEL_NAMES[family]
    share = CHEAPER_THAN[family]
    lines = [f"Against {name} (`{base['preset']}`):", ""]
    bx, by = _curve(base)
    cx, cy = _curve(cand)
    ratio = cx[-1] / bx[-1]
    last_delta = cy[-1] - by[-1]
    lines.append(f"- Last exit {100 * (1 - ratio):.1f}% cheaper than {name}'s ({cx[-1] / 1e6:.2f}M against "
                 f"{bx[-1] / 1e6:.2f}M) at {100 * last_delta:+.2f} points: "
                 f"{verdict(last_delta, noise) if ratio <= 1 - share else f'not supported (not {100 * share:.0f}% cheaper)'}.")
    window = [(x, y - interpolate(bx, by, x)) for x, y in zip(cx, cy)
              if 25e6 <= x <= 64e6 and interpolate(bx, by, x) is not None]
    if window:
        worst = min(d for _, d in window)
        lines.append("- 0.5-1 point ahead from 25M to 64M MACs: differences "
                     + ", ".join(f"{100 * d:+.2f} at {x / 1e6:.1f}M" for x, d in window)
                     + f": {verdict(worst, noise)} (read on the smallest difference).")
    budget = [(b, interpolate(*_budget_curve(cand), b * 1e6), interpolate(*_budget_curve(base), b * 1e6))
              for b in BUDGETS_M]
    budget = [(b, c - m) for b, c, m in budget if c is not None and m is not None]
    if budget:
        worst = min(d for _, d in budget)
        lines.append("- Budgeted ahead at every budget: " + ", ".join(f"{100 * d:+.2f} at {b}M" for b, d in budget)
                     + f": {verdict(worst, noise)} (read on the smallest difference).")
    return lines + [""]


if __name__ == "__main__":
    app.run(main)
