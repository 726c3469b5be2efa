"""fusionnet-cifar before and after the paper-fidelity fixes, trained side by side with one recipe.

    python benchmarks/paper_fidelity.py --before 9aaa325 --after 7c3219d        # ~2 x 1 h on 2 cores
    python benchmarks/paper_fidelity.py --report_only                           # tables + plot again

Each commit is checked out in a git worktree under --work and trains `fusionnet-cifar` with the
recipe of benchmarks/cifar10_cpu.py (45k/5k split of ../shared/data/cifar10-jpeg.tar.gz, batch
128, lr 0.05, 1 warmup epoch, cosine, label smoothing 0.1, crop + flip, no mixing, seed 0).
The two trainings run at the same time, so they share the machine's state. Re-running the same
command resumes them. Results (validation top-1 per exit, MACs, logs, plot; no checkpoints) go to
benchmarks/results/paper_fidelity/.

Before (9aaa325): Keras's decoupled weight decay on kernels only, Keras initialisers, MSDNet's
transition. After: PyTorch's coupled decay on every parameter, the official code's effective
(PyTorch default) initialisation, the paper's transition. CutMix is off in this recipe, so its fix
is not part of the comparison.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import csv  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

from absl import app, flags  # noqa: E402

flags.DEFINE_string("before", "9aaa325", "Commit before the fixes.")
flags.DEFINE_string("after", "7c3219d", "Commit with the fixes.")
flags.DEFINE_integer("epochs", 10, "Epochs per model.")
flags.DEFINE_integer("seed", 0, "Seed of both trainings (the split, the initialisation, the augmentation).")
flags.DEFINE_string("data", os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz"), "Dataset.")
flags.DEFINE_string("work", "runs/paper_fidelity", "Worktrees and run directories (not committed).")
flags.DEFINE_string("out", "benchmarks/results/paper_fidelity", "Results folder.")
flags.DEFINE_bool("report_only", False, "Only rewrite the results from the finished runs in --work.")
FLAGS = flags.FLAGS

RECIPE = ["--preset", "fusionnet-cifar", "--batch_size", "128", "--lr", "0.05", "--warmup_epochs", "1",
          "--mix_prob", "0", "--val_size", "5000", "--verbose", "2",
          "--inter_op_threads", "2", "--intra_op_threads", "1"]


def _worktree(commit: str) -> str:
    path = os.path.abspath(os.path.join(FLAGS.work, f"src-{commit}"))
    if not os.path.exists(path):
        subprocess.run(["git", "worktree", "add", "--detach", path, commit], check=True, cwd=ROOT)
    return path


def _train_both() -> None:
    procs = []
    for name, commit in (("before", FLAGS.before), ("after", FLAGS.after)):
        src = _worktree(commit)
        run = os.path.abspath(os.path.join(FLAGS.work, name))
        cmd = [sys.executable, "train.py", "--dataset", os.path.abspath(FLAGS.data), "--epochs", str(FLAGS.epochs),
               "--output", run, *RECIPE, "--seed", str(FLAGS.seed)]
        print(f"$ (cd {src} && {' '.join(cmd)})", flush=True)
        log = open(os.path.join(FLAGS.work, f"{name}.log"), "a")
        procs.append(subprocess.Popen(cmd, cwd=src, stdout=log, stderr=subprocess.STDOUT))
    if any(p.wait() for p in procs):
        raise SystemExit(f"a training failed; see {FLAGS.work}/before.log and after.log")


def _log_rows(run: str) -> list[dict]:
    with open(os.path.join(run, "log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return rows


def _test_comparison() -> list[dict]:
    """Per-exit test top-1 of both runs and the paired standard error, once both are evaluated."""
    runs = [os.path.join(FLAGS.work, name) for name in ("before", "after")]
    if not all(os.path.exists(os.path.join(r, "eval", "logits_model.npz")) for r in runs):
        return []
    from tf_fusionnet.evaluation.metrics import paired_difference
    from tf_fusionnet.runs.reading import load_run, run_logits

    before, after = (run_logits(load_run(r), verbose=0) for r in runs)
    labels = before["test_labels"]
    rows = []
    for k in range(len(before["test_logits"])):
        correct_b = before["test_logits"][k].argmax(-1) == labels
        correct_a = after["test_logits"][k].argmax(-1) == labels
        diff, se = paired_difference(correct_a, correct_b)
        rows.append({"exit": k + 1, "before": float(correct_b.mean()), "after": float(correct_a.mean()),
                     "difference": diff, "standard_error": se})
    return rows


def report() -> str:
    from tf_fusionnet.evaluation.plots import plot_curves
    from tf_fusionnet.runs.folder import LEGACY_TRAIN_VALUES as _LEGACY_TRAIN_VALUES
    from tf_fusionnet.utils import atomic_write_json, atomic_write_text, library_versions, machine_info

    os.makedirs(FLAGS.out, exist_ok=True)
    models = {}
    for name in ("before", "after"):
        run = os.path.join(FLAGS.work, name)
        config = json.load(open(os.path.join(run, "config.json")))
        rows = _log_rows(run)
        num_exits = len(config["exit_macs"])
        models[name] = {
            "git_commit": config.get("git_commit"),
            "epochs_logged": len(rows),
            "exit_macs": config["exit_macs"],
            # Keys a run written before they existed lacks are shown at the value it trained with.
            "recipe": {k: {**_LEGACY_TRAIN_VALUES, **config["train"]}.get(k) for k in (
                "epochs", "batch_size", "lr", "warmup_epochs", "weight_decay", "weight_decay_style",
                "decay_norm_and_bias", "mix_prob", "label_smoothing", "seed")},
            "model_config": config["model_config"],
            "val_top1": [float(rows[-1][f"val_exit_{k}_accuracy"]) for k in range(1, num_exits + 1)],
            "train_top1": [float(rows[-1][f"exit_{k}_accuracy"]) for k in range(1, num_exits + 1)],
            "val_top1_per_epoch": [[float(r[f"val_exit_{k}_accuracy"]) for k in range(1, num_exits + 1)]
                                   for r in rows],
            "epoch_seconds": [float(r["epoch_seconds"]) for r in rows if r.get("epoch_seconds")],
        }
        shutil.copy(os.path.join(run, "log.csv"), os.path.join(FLAGS.out, f"{name}_log.csv"))
    before, after = models["before"], models["after"]
    test_rows = _test_comparison()
    summary = {"command": "python " + " ".join(sys.argv), "data": os.path.basename(FLAGS.data),
               "recipe": [*RECIPE, "--seed", str(FLAGS.seed)], "models": models, "test_comparison": test_rows,
               "machine": machine_info(), "versions": library_versions(),
               "note": "validation = the 5,000 held-out training images (never the test set); both runs "
                       "trained concurrently on one 2-core machine, so epoch_seconds are not speeds"}
    atomic_write_json(os.path.join(FLAGS.out, "summary.json"), summary)
    plot_curves(os.path.join(FLAGS.out, "val_top1.png"),
                [{"label": f"before ({before['git_commit'][:7] if before['git_commit'] else '?'})",
                  "x": before["exit_macs"], "y": before["val_top1"]},
                 {"label": f"after ({after['git_commit'][:7] if after['git_commit'] else '?'})",
                  "x": after["exit_macs"], "y": after["val_top1"]}],
                f"fusionnet-cifar, {before['epochs_logged']} epochs, validation top-1 per exit")
    lines = [f"fusionnet-cifar, {before['epochs_logged']} / {after['epochs_logged']} epochs, validation top-1 (%) "
             "per exit (5,000 held-out images):", "",
             "| exit | before MMACs | before top-1 | after MMACs | after top-1 | after - before |", "|---|---|---|---|---|---|"]
    for k, (mb, vb, ma, va) in enumerate(zip(before["exit_macs"], before["val_top1"], after["exit_macs"],
                                             after["val_top1"]), start=1):
        lines.append(f"| {k} | {mb / 1e6:.2f} | {100 * vb:.2f} | {ma / 1e6:.2f} | {100 * va:.2f} | "
                     f"{100 * (va - vb):+.2f} |")
    if test_rows:
        lines += ["", "Test top-1 (%) per exit on the 10,000 test images (`python evaluate.py --run WORK/before` and "
                  "`--run WORK/after`), with the paired standard error of the difference (same images):", "",
                  "| exit | before | after | after - before | paired SE |", "|---|---|---|---|---|"]
        for row in test_rows:
            lines.append(f"| {row['exit']} | {100 * row['before']:.2f} | {100 * row['after']:.2f} | "
                         f"{100 * row['difference']:+.2f} | {100 * row['standard_error']:.2f} |")
    lines.append("")
    text = "\n".join(lines)
    atomic_write_text(os.path.join(FLAGS.out, "results.md"), text)
    return text


def main(argv):
    os.makedirs(FLAGS.work, exist_ok=True)
    if not FLAGS.report_only:
        _train_both()
    print(report())
    print(f"wrote {FLAGS.out}/ (summary.json, results.md, val_top1.png, before_log.csv, after_log.csv)")
    return 0


if __name__ == "__main__":
    app.run(main)
