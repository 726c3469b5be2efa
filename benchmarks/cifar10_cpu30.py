"""The driver of the long comparisons: the 30-epoch one (issues 17 and 33) and the paper's regime (issue 44).

    python benchmarks/cifar10_cpu30.py --comparison paper300 --commit   # issue 44: 300 epochs, lossless CIFAR
    python benchmarks/cifar10_cpu30.py --comparison paper300 --status   # every run's epochs, s/epoch, hours left

``--comparison paper300`` plans its runs in ``cpu30/paper300.py`` (a bfloat16 pilot, then
CIFAR-100, CIFAR-10, the official MSDNet recipe, a second seed) and keeps its results in
benchmarks/results/paper300; everything below (resuming, carrying, committing) is shared.
The rest of this docstring is the 30-epoch comparison (the default, ``--comparison cpu30``):

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

Issue 33's phases follow, each run keeping its per-image validation and test logits:

5. ``distill_pilot``: exit distillation at each alpha:T of ``--distill_pilot`` on the pilot
   preset for ``--ablation_epochs``, scored on the validation split; the best is the choice.
6. ``distill`` and ``seed2``: both main models with that distillation at seeds 0, 1, 2, and
   without it at seed 2, so every cell has three seeds.
7. ``rerun``: seed 0 again of the models of ``--rerun_seed0`` (FusionNet, whose first run's
   per-image predictions were lost); it replaces that run in every verdict.
8. ``ge_pilot``: gradient equilibrium on the pilot preset for ``--ablation_epochs``
   (validation split only).

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

import shutil  # noqa: E402

from absl import app, flags  # noqa: E402

from common import ROOT, run_command  # noqa: E402
from cpu30.carry import commit_paths, carry_now, restore_carry, seconds_until  # noqa: E402
from cpu30.jobs import (DISTILL_PHASES, PHASES, ABLATIONS, Job, choose_distillation, distill_jobs,  # noqa: E402
                        distill_pilot_jobs, ge_pilot_jobs, later_jobs, pilot_jobs, pilot_score, planned_jobs,
                        progress, run_groups, status, train)
from cpu30.carry import log_rows  # noqa: E402
from cpu30.report import write_report  # noqa: E402
from cpu30.results import (backfill_predictions, budgeted_entry, collect, load_summary, model_cascade,  # noqa: E402
                           pair_phase)

flags.DEFINE_enum("comparison", "cpu30", ["cpu30", "paper300"],
                  "cpu30: the 30-epoch JPEG CIFAR-10 comparison; paper300: issue 44's 300-epoch runs on lossless CIFAR "
                  "(its own --work, --out and --carry unless given).")
flags.DEFINE_string("data", os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz"), "Dataset.")
flags.DEFINE_list("phases", [], "Phases to run, in this order (default: all of the comparison's).")
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
flags.DEFINE_list("rerun_seed0", ["fusionnet-cifar"],
                  "Main models trained again at seed 0 (as PRESET-EPOCHSep-seed0, after the distilled runs) because "
                  "their first run kept no per-image predictions; the rerun replaces it in every verdict.")
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


def _settings():
    pilot = dict(pilot_lrs=list(FLAGS.pilot_lrs), pilot_mix=list(FLAGS.pilot_mix), cascade_images=FLAGS.cascade_images,
                 distill_pilot=[tuple(float(v) for v in pair.split(":")) for pair in FLAGS.distill_pilot])
    if FLAGS.smoke:
        return dict(**pilot, data="sample", val_size=50, batch=32, precision=FLAGS.precision, main=["fusionnet-tiny", "ranet-tiny", "msdnet-tiny"],
                    ablations=(), rerun_seed0=["fusionnet-tiny"],
                    epochs=1, ablation_epochs=1, seed_epochs=1, pilot_epochs=1, pilot_preset="msdnet-tiny")
    from tf_fusionnet.presets import PRESETS

    main = list(FLAGS.main_presets)
    if "ranet-cifar" in PRESETS and "ranet-cifar" not in main:
        main.insert(-1, "ranet-cifar")
    return dict(**pilot, data=os.path.abspath(FLAGS.data), val_size=5000, batch=FLAGS.batch_size, main=main,
                precision=FLAGS.precision, rerun_seed0=list(FLAGS.rerun_seed0),
                ablations=ABLATIONS, epochs=FLAGS.epochs, ablation_epochs=FLAGS.ablation_epochs,
                seed_epochs=FLAGS.seed_epochs, pilot_epochs=FLAGS.pilot_epochs, pilot_preset=FLAGS.pilot_preset)


def _folders() -> tuple[str, str, str]:
    """--out, --work and --carry; paper300's own unless given; a smoke run's own unless given."""
    out, work, carry = os.path.abspath(FLAGS.out), os.path.abspath(FLAGS.work), os.path.abspath(FLAGS.carry)
    if FLAGS.comparison == "paper300":
        if not FLAGS["out"].present:
            out = os.path.join(ROOT, "benchmarks", "results", "paper300")
        if not FLAGS["work"].present:
            work = os.path.join(ROOT, "..", "paper300-work")
        if not FLAGS["carry"].present:
            carry = os.path.join(ROOT, "benchmarks", "carry", "paper300")
    if FLAGS.smoke:  # never into the real runs and results, unless asked for explicitly
        if not FLAGS["work"].present:
            work += "-smoke"
        if not FLAGS["out"].present:
            out = os.path.join(work, "results")
        if not FLAGS["carry"].present:
            carry = os.path.join(work, "carry")
    return out, work, os.path.abspath(carry)


def _carry_flags(planned, work: str, carry: str, finished: dict, label: str) -> bool:
    """``--carry_now`` (carries and returns True: nothing else to do) and ``--carry_at`` (a timer
    that carries at that time while training goes on) over the comparison's ``planned()`` runs."""
    def carry_and_commit() -> None:
        lines = carry_now(planned(), work, carry, finished)
        print("\n".join(lines) or "no unfinished run has a finished epoch: nothing to carry", flush=True)
        if FLAGS.commit and lines:
            commit_paths([carry], f"{label}: carry the unfinished runs' last finished epochs into the checkout "
                         "(" + "; ".join(lines) + ")")

    if FLAGS.carry_now:
        carry_and_commit()
        return True
    if FLAGS.carry_at:
        import threading

        delay = seconds_until(FLAGS.carry_at)
        print(f"carrying the unfinished runs in {delay / 60:.0f} min ({FLAGS.carry_at})", flush=True)
        timer = threading.Timer(delay, carry_and_commit)
        timer.daemon = True  # the driver need not wait for it once its runs are done
        timer.start()
    return False


def train_and_keep(job: Job, s: dict, work: str, out: str, carry: str, summary: dict, save, evaluate: bool) -> None:
    """Trains (or resumes, from --carry where that is further) one run, evaluates it, keeps its
    results in --out and drops its carried state; ``save(message)`` writes and commits."""
    restored = restore_carry(os.path.join(carry, job.name), os.path.join(work, job.name))
    if restored:
        print(f"{job.name}: resuming from the state carried in {carry} ({restored} epochs)", flush=True)
    train(job, s, work)
    if evaluate:
        run_command([sys.executable, "evaluate.py", "--run", os.path.join(work, job.name)])
    summary["jobs"][job.name] = collect(job, work, out)
    shutil.rmtree(os.path.join(carry, job.name), ignore_errors=True)
    save(f"{os.path.basename(out)}: {job.phase} run {job.name} finished")


def main(argv):
    if FLAGS.comparison == "paper300":
        return main_paper300()
    from tf_fusionnet.utils import atomic_write_json, git_commit, library_versions, machine_info

    out, work, carry = _folders()
    if FLAGS.report_only:
        print(write_report(out))
        return 0
    if FLAGS.status:
        print(status(_settings(), work, load_summary(out), carry))
        return 0
    phases = _phases(PHASES)
    s = _settings()
    summary = load_summary(out)

    if _carry_flags(lambda: planned_jobs(s, summary), work, carry, summary["jobs"], "cifar10_cpu30"):
        return 0
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
            commit_paths([out, carry], message)

    def run_job(job: Job, evaluate: bool) -> None:  # this comparison's folders and summary
        train_and_keep(job, s, work, out, carry, summary, save, evaluate)

    pilots = pilot_jobs(s)
    choice = summary.get("recipe")
    if "pilot" in phases:
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
    jobs = [j for j in later_jobs(s, choice["lr"], choice["mix_prob"]) if j.phase in phases]
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
    if "distill_pilot" in phases:
        for i, job in enumerate(dpilots):
            print(f"[distill_pilot {i + 1}/{len(dpilots)}] {job.name}: "
                  f"{progress(dpilots, work, summary['jobs'], carry)}", flush=True)
            if job.name not in summary["jobs"]:
                run_job(job, evaluate=False)
        reference = next((j for j in summary["jobs"].values()
                          if j["phase"] == "ablation" and j["preset"] == s["pilot_preset"]), None)
        if reference is not None and "val_top1_mean_over_exits" not in reference:
            reference.update(pilot_score(log_rows(os.path.join(out, reference["name"]))))
        chosen = choose_distillation(dpilots, reference, summary["jobs"])
        # A restart walks the pilot again: commit only when the choice itself is new.
        changed = summary.get("distill") != chosen
        summary["distill"] = chosen
        save("cifar10_cpu30: the distillation pilot chose alpha and T on the validation split" if changed else None)
    distill = summary.get("distill")
    djobs = [j for j in distill_jobs(s, choice["lr"], choice["mix_prob"], distill)
             if j.phase in phases] if distill else []
    if not distill and any(p in phases for p in DISTILL_PHASES):
        raise SystemExit("error: no distillation chosen yet: run the distillation pilot first (--phases distill_pilot)")
    for i, job in enumerate(djobs):
        print(f"[{job.phase} {i + 1}/{len(djobs)}] {job.name}: {progress(djobs, work, summary['jobs'], carry)}",
              flush=True)
        if job.name not in summary["jobs"]:
            run_job(job, evaluate=True)
    gpilots = ge_pilot_jobs(s, choice["lr"], choice["mix_prob"]) if distill and "ge_pilot" in phases else []
    for i, job in enumerate(gpilots):
        print(f"[ge_pilot {i + 1}/{len(gpilots)}] {job.name}: {progress(gpilots, work, summary['jobs'], carry)}",
              flush=True)
        if job.name not in summary["jobs"]:
            run_job(job, evaluate=False)
    print(write_report(out))
    return 0


def _phases(known) -> list[str]:
    chosen = list(FLAGS.phases) or list(known)
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise SystemExit(f"error: --phases: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
    return chosen


def main_paper300() -> int:
    """Issue 44: the bfloat16 pilot, then the 300-epoch runs of :mod:`cpu30.paper300`, each
    evaluated and its results (log, anytime and budgeted tables, per-image logits) kept in --out."""
    from cpu30 import paper300 as plan
    from cpu30.paper_report import write_paper_report
    from tf_fusionnet.utils import atomic_write_json, git_commit, library_versions, machine_info

    out, work, carry = _folders()
    if FLAGS.report_only:
        print(write_paper_report(out))
        return 0
    phases = _phases(plan.PAPER_PHASES)
    summary = load_summary(out)
    data_dir = os.path.dirname(os.path.abspath(FLAGS.data))
    s = dict(data="sample", val_size=50 if FLAGS.smoke else 5000, batch=512, precision="float32",
             cascade_images=FLAGS.cascade_images)
    pilot = plan.precision_pilot_job(data_dir, FLAGS.smoke)
    choice = summary.get("precision_choice")

    def planned() -> list[Job]:
        return [pilot] + (plan.paper_jobs(choice["precision"], data_dir, FLAGS.smoke) if choice else [])

    if FLAGS.status:
        lines = plan.paper_status(planned(), work, summary["jobs"], carry, machine_info()["cpu_model"])
        if not choice:
            lines.insert(-1, "(the 300-epoch runs are listed once the pilot has chosen the number format)")
        print("\n".join(lines))
        return 0

    if _carry_flags(planned, work, carry, summary["jobs"], "paper300"):
        return 0
    os.makedirs(out, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    summary.update({"command": "python " + " ".join(sys.argv), "versions": library_versions(),
                    "machine": machine_info(), "candidate_preset": plan.MODELS[0], "baseline_preset": plan.MODELS[-1]})

    def save(message: str | None = None) -> None:
        summary["git_commit"] = git_commit()
        atomic_write_json(os.path.join(out, "summary.json"), summary)
        write_paper_report(out)
        if FLAGS.commit and message:
            commit_paths([out, carry], message)

    if "precision_pilot" in phases and pilot.name not in summary["jobs"]:
        train_and_keep(pilot, s, work, out, carry, summary, save, evaluate=False)
    if not choice and pilot.name in summary["jobs"]:
        choice = plan.precision_choice(log_rows(os.path.join(out, pilot.name)), plan.reference_rows())
        summary["precision_choice"] = choice
        save(f"paper300: the bfloat16 pilot chose {choice['precision']} for the long runs (validation only)")
    if not choice:
        raise SystemExit("error: no number format chosen yet: run the precision_pilot phase first")
    jobs = [j for j in planned()[1:] if j.phase in phases]
    for i, job in enumerate(jobs):
        print(f"[{job.phase} {i + 1}/{len(jobs)}] {job.name}", flush=True)
        if job.name not in summary["jobs"]:
            train_and_keep(job, s, work, out, carry, summary, save, evaluate=True)
    print(write_paper_report(out))
    return 0


if __name__ == "__main__":
    app.run(main)
