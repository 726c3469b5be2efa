"""Soak test of the cascade runner: one million images streamed through it at constant memory.

    python benchmarks/runner_soak.py                  # trains + exports a tiny bundle first (~1 min)
    python benchmarks/runner_soak.py --bundle BUNDLE --images 1000000

Synthetic uint8 images are generated batch by batch (nothing is kept), classified with early
exit through the same streaming path as `cascade_runner.py` (`classify_batches` and its running
summary), and the process's peak RSS is recorded after 10k, 100k and every further 100k images.
Goal: the peak at 1M within 10 MB of the peak at 10k. Writes benchmarks/results/runner_soak.json.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tf_fusionnet.console import setup_environment  # noqa: E402

setup_environment()

import resource  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from common import bundle_of_one_epoch  # noqa: E402

flags.DEFINE_string("bundle", None, "Bundle to stream through (default: train and export a tiny one in --work).")
flags.DEFINE_string("work", "runs/runner_soak", "Where the tiny run and bundle go (not committed).")
flags.DEFINE_integer("images", 1_000_000, "Images to stream.")
flags.DEFINE_integer("batch_size", 100, "Images per cascade call.")
flags.DEFINE_string("precision", "float32", "Bundle precision.")
flags.DEFINE_string("out", "benchmarks/results/runner_soak.json", "Result file.")
FLAGS = flags.FLAGS


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def tiny_bundle() -> str:
    return bundle_of_one_epoch(FLAGS.work, "fusionnet-tiny")


def main(argv):
    from tf_fusionnet.export.cascade_runner import CascadeRunner, RunningSummary, classify_batches
    from tf_fusionnet.utils import atomic_write_json, git_commit, library_versions, machine_info

    bundle = FLAGS.bundle or tiny_bundle()
    runner = CascadeRunner(bundle, precision=FLAGS.precision, threads=1)
    entry = runner.manifest["thresholds"][len(runner.manifest["thresholds"]) // 2]
    runner = CascadeRunner(bundle, precision=FLAGS.precision, threads=1, budget=entry["budget_macs"])
    shape = runner.input_shape
    rng = np.random.default_rng(0)

    def batches():
        done = 0
        while done < FLAGS.images:
            n = min(FLAGS.batch_size, FLAGS.images - done)
            yield [None] * n, rng.integers(0, 256, (n, *shape), dtype=np.uint8)
            done += n

    checkpoints = sorted({10_000, *range(100_000, FLAGS.images + 1, 100_000), FLAGS.images})
    summary = RunningSummary(runner.num_exits)
    records, next_checkpoint = [], 0
    start = time.perf_counter()
    for _ in classify_batches(runner, batches(), summary=summary):
        if next_checkpoint < len(checkpoints) and summary.count == checkpoints[next_checkpoint]:
            elapsed = time.perf_counter() - start
            records.append({"images": summary.count, "peak_rss_mb": round(peak_rss_mb(), 2),
                            "rss_mb": round(current_rss_mb(), 2), "seconds": round(elapsed, 1)})
            print(f"{summary.count:>9,} images  peak RSS {records[-1]['peak_rss_mb']:.1f} MB  "
                  f"{summary.count / elapsed:,.0f} img/s", flush=True)
            next_checkpoint += 1
    at_10k = next(r for r in records if r["images"] == 10_000)
    growth = records[-1]["peak_rss_mb"] - at_10k["peak_rss_mb"]
    result = {
        "command": "python " + " ".join(sys.argv),
        "bundle": os.path.abspath(bundle), "precision": FLAGS.precision, "batch_size": FLAGS.batch_size,
        "budget_macs": entry["budget_macs"], "images": summary.count,
        "exit_counts": summary.exit_counts, "mean_macs": summary.total_macs / summary.count,
        "images_per_second": summary.count / (time.perf_counter() - start),
        "checkpoints": records,
        "peak_rss_growth_mb_10k_to_last": round(growth, 2),
        "goal_flat_within_10mb": bool(growth <= 10.0),
        "machine": machine_info(), "versions": library_versions(), "git_commit": git_commit(),
    }
    atomic_write_json(FLAGS.out, result)
    print(f"peak RSS {at_10k['peak_rss_mb']:.1f} MB at 10k, {records[-1]['peak_rss_mb']:.1f} MB at "
          f"{records[-1]['images']:,}: {growth:+.2f} MB ({'flat' if growth <= 10 else 'NOT flat'} within 10 MB); "
          f"wrote {FLAGS.out}")
    return 0


if __name__ == "__main__":
    app.run(main)
