"""`--deadline_ms` when the stage costs it starts from were measured at a loaded moment.

    python benchmarks/deadline_stale_costs.py               # trains + exports a small bundle first (~3 min)
    python benchmarks/deadline_stale_costs.py --bundle BUNDLE

The runner's deadline starts from per-stage costs measured once (or read from the bundle's
timing cache). Measured while the machine was busy, they are too high, and a stage they rule
out was never run again, so its estimate could never fall: with a 5 ms deadline on a bundle whose
whole model took 4.98 ms, every image answered at exit 1 (issue 36). This benchmark measures the
true per-stage costs, gives the runner costs ``--stale_factor`` times higher, and classifies the
same images one at a time under a deadline of ``--deadline_factor`` times the whole model's
mean, with the runner of ``--old_commit`` and with this checkout's, in alternating blocks.
Writes benchmarks/results/deadline_stale_costs.json.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tf_fusionnet.console import setup_environment  # noqa: E402

setup_environment()

import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from common import bundle_of_one_epoch  # noqa: E402

flags.DEFINE_string("bundle", None, "Bundle to run (default: train and export a small one in --work).")
flags.DEFINE_string("work", "runs/deadline_stale_costs", "Where the run and bundle go (not committed).")
flags.DEFINE_string("old_commit", "7a1e4cf", "The runner before the fix.")
flags.DEFINE_float("stale_factor", 3.0, "How much higher than measured the runner's starting costs are.")
flags.DEFINE_float("deadline_factor", 1.2, "Deadline as a multiple of the whole model's mean time.")
flags.DEFINE_integer("images", 1200, "Images per runner (one at a time).")
flags.DEFINE_integer("block", 100, "Images per alternating block.")
flags.DEFINE_string("out", "benchmarks/results/deadline_stale_costs.json", "Result file.")
FLAGS = flags.FLAGS


def small_bundle() -> str:
    return bundle_of_one_epoch(FLAGS.work, "fusionnet-cifar")


def old_runner_module(folder: str):
    source = subprocess.run(["git", "show", f"{FLAGS.old_commit}:tf_fusionnet/export/cascade_runner.py"],
                            cwd=ROOT, check=True, capture_output=True, text=True).stdout
    path = os.path.join(folder, "cascade_runner_old.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("cascade_runner_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv):
    from tf_fusionnet.data.sources import load_dataset
    from tf_fusionnet.export import cascade_runner
    from tf_fusionnet.utils import atomic_write_json, git_commit, library_versions, machine_info

    bundle = FLAGS.bundle or small_bundle()
    data = load_dataset("sample")
    images = data.test_images
    with tempfile.TemporaryDirectory() as folder:
        old = old_runner_module(folder)
        runners = {"before (" + FLAGS.old_commit + ")": old.CascadeRunner(bundle, threads=1),
                   "after (this checkout)": cascade_runner.CascadeRunner(bundle, threads=1)}
    measured = cascade_runner.CascadeRunner(bundle, threads=1).cascade_timings(images=100)
    whole_ms = measured["exit_ms"][-1]
    deadline = FLAGS.deadline_factor * whole_ms
    stale = {"exit_ms": [FLAGS.stale_factor * v for v in measured["exit_ms"]],
             "stage_cost_ms": [FLAGS.stale_factor * v for v in measured["stage_cost_ms"]]}
    print(f"measured: whole model {whole_ms:.2f} ms, stage costs "
          f"{', '.join(f'{v:.2f}' for v in measured['stage_cost_ms'])} ms; deadline {deadline:.2f} ms; the runners "
          f"start from costs {FLAGS.stale_factor}x those", flush=True)
    for runner in runners.values():
        runner._timings = {k: list(v) for k, v in stale.items()}
    results = {name: [] for name in runners}
    for start in range(0, FLAGS.images, FLAGS.block):
        for name, runner in runners.items():  # alternating blocks: the same machine moments for both
            for i in range(start, min(start + FLAGS.block, FLAGS.images)):
                results[name].append(runner.classify(images[i % len(images)], deadline_ms=deadline)[0])
    summary = {}
    for name, rows in results.items():
        ms = np.array([r["ms"] for r in rows])
        exits = np.array([r["exit"] for r in rows])
        last_half = exits[len(exits) // 2:]
        summary[name] = {
            "exit_counts": np.bincount(exits, minlength=len(measured["exit_ms"]) + 1)[1:].tolist(),
            "exit_counts_second_half": np.bincount(last_half, minlength=len(measured["exit_ms"]) + 1)[1:].tolist(),
            "mean_exit": float(exits.mean()), "mean_macs": float(np.mean([r["macs"] for r in rows])),
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "late_share": float(np.mean(ms > deadline)),
        }
        s = summary[name]
        print(f"{name}: exits {s['exit_counts']} (second half {s['exit_counts_second_half']}), mean "
              f"{s['mean_macs'] / 1e6:.2f}M MACs, p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, "
              f"{100 * s['late_share']:.1f}% over the deadline", flush=True)
    atomic_write_json(FLAGS.out, {
        "command": "python " + " ".join(sys.argv), "bundle": os.path.abspath(bundle), "precision": "float32",
        "threads": 1, "measured_exit_ms": measured["exit_ms"], "measured_stage_cost_ms": measured["stage_cost_ms"],
        "stale_factor": FLAGS.stale_factor, "deadline_ms": deadline, "images_per_runner": FLAGS.images,
        "results": summary, "machine": machine_info(), "versions": library_versions(), "git_commit": git_commit(),
        "note": "the driver of benchmarks/cifar10_cpu30.py was training on the other core during this run",
    })
    print(f"wrote {FLAGS.out}")
    return 0


if __name__ == "__main__":
    app.run(main)
