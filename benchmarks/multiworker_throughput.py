"""Training throughput of the multi-worker loop against Keras ``fit`` on one machine.

    python benchmarks/multiworker_throughput.py             # fusionnet-cifar, batch 64, sample data

Three runs of ``train.py`` on the same data and global batch, one after the other:

* ``fit``: the single-machine path (``--strategy default``, Keras ``fit``);
* ``custom loop, 1 worker``: ``--strategy multiworker`` with a one-worker ``TF_CONFIG``, i.e. the
  custom ``strategy.run`` step alone;
* ``custom loop, 2 workers``: ``python -m tf_fusionnet.launch --workers 2`` on 127.0.0.1.

Each run's ``log.csv`` gives the steady-state training images per second of every epoch (steps
after an epoch's first); the median over the epochs after the first is reported. On a 2-core
machine two workers share the cores, so that row is a functional check, not a speed-up.
Writes ``--out`` with the CPU model and SIMD flags and the library versions.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tf_fusionnet.console import setup_environment  # noqa: E402  (before TensorFlow loads)

setup_environment()

import csv  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

flags.DEFINE_string("preset", "fusionnet-cifar", "Preset.")
flags.DEFINE_string("dataset", "sample", "train.py --dataset.")
flags.DEFINE_integer("batch_size", 64, "Global batch.")
flags.DEFINE_integer("epochs", 4, "Epochs per run (the first is not counted).")
flags.DEFINE_string("out", os.path.join(ROOT, "benchmarks", "results", "multiworker_throughput.json"), "Result file.")
FLAGS = flags.FLAGS


def _images_per_second(run: str) -> list[float]:
    with open(os.path.join(run, "log.csv"), newline="") as f:
        return [float(r["train_images_per_second"]) for r in csv.DictReader(f) if r.get("train_images_per_second")]


def _run(name: str, cmd: list[str], env: dict, run: str) -> dict:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: {name} failed:\n{done.stderr[-3000:]}")
    per_epoch = _images_per_second(run)
    steady = per_epoch[1:] or per_epoch
    result = {"name": name, "command": " ".join(cmd[1:]), "process_seconds": round(time.perf_counter() - start, 1),
              "images_per_second_per_epoch": per_epoch, "median_images_per_second": statistics.median(steady)}
    print(f"{name:24s} {result['median_images_per_second']:7.1f} img/s (epochs {per_epoch})", flush=True)
    return result


def main(argv):
    from tf_fusionnet.launch import free_ports, tf_config
    from tf_fusionnet.utils import atomic_write_json, git_commit, library_versions, machine_info

    work = tempfile.mkdtemp(prefix="multiworker_throughput-")
    common = ["train.py", "--preset", FLAGS.preset, "--dataset", FLAGS.dataset, "--batch_size", str(FLAGS.batch_size),
              "--epochs", str(FLAGS.epochs), "--mix_prob", "0", "--verbose", "2"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    try:
        runs = [
            _run("fit", [sys.executable, *common, "--output", os.path.join(work, "fit")], env, os.path.join(work, "fit")),
            _run("custom loop, 1 worker",
                 [sys.executable, *common, "--strategy", "multiworker", "--output", os.path.join(work, "one")],
                 {**env, "TF_CONFIG": tf_config([f"127.0.0.1:{free_ports(1)[0]}"], 0)}, os.path.join(work, "one")),
            _run("custom loop, 2 workers",
                 [sys.executable, "-m", "tf_fusionnet.launch", "--workers", "2", "--log_dir", os.path.join(work, "logs"),
                  *common, "--output", os.path.join(work, "two")], env, os.path.join(work, "two")),
        ]
        result = {"command": "python " + " ".join(sys.argv), "machine": machine_info(), "versions": library_versions(),
                  "git_commit": git_commit(),
                  "settings": {"preset": FLAGS.preset, "dataset": FLAGS.dataset, "batch_size": FLAGS.batch_size,
                               "epochs": FLAGS.epochs},
                  "runs": runs,
                  "custom_over_fit": round(runs[1]["median_images_per_second"] / runs[0]["median_images_per_second"], 3)}
        atomic_write_json(FLAGS.out, result)
        print(f"custom loop / fit on one machine: {result['custom_over_fit']:.2f}x; wrote {FLAGS.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    app.run(main)
