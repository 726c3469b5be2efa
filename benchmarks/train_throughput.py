"""Training throughput, side by side with a baseline commit, and real epochs against synthetic ones.

    python benchmarks/train_throughput.py                       # baseline 9aaa325, 3 rounds
    python benchmarks/train_throughput.py --rounds 5 --variants auto,float32
    python benchmarks/train_throughput.py --real_epochs 2       # also 2 real CIFAR-10 epochs

Synthetic part: for each round and preset, the baseline commit (checked out in a
temporary ``git worktree``) and this tree each train ``--steps`` steps of batch
``--batch_size`` on random data after ``--warmup_steps``, one after the other, so
both see the same machine at nearly the same moment. The baseline runs its own
``benchmarks/train_throughput.py --child`` (its own compile settings); this tree
compiles exactly as ``train.py`` does (``compile_for_training``), once per
``--variants`` entry (a ``--precision`` value, ``+xla`` for ``--jit_compile on``,
``+nometrics`` without the per-exit accuracy metrics, ``+speN`` with Keras's
``steps_per_execution=N``). Where the two commits build a
preset's network differently, MACs trained per second (images/s x forward MACs per
image) compare them at equal work; both are reported.

Real part (``--real_epochs N``): ``train.py`` with the CIFAR-10 benchmark recipe
(``benchmarks/cifar10_cpu.py``) on ``--data`` for N epochs; the last epoch's
training-pass throughput and its validation and checkpoint time come from the run's
``log.csv``, next to a synthetic measurement of the same preset and settings taken
right before.

Writes ``--out`` (benchmarks/results/train_throughput.json) with the CPU model and
SIMD flags, library versions, both commits, every setting and every round.
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

flags.DEFINE_list("presets", ["msdnet-cifar-anytime", "fusionnet-cifar", "ranet-cifar"], "Presets.")
flags.DEFINE_string("baseline", "9aaa325", "Commit to compare with ('' to skip).")
flags.DEFINE_integer("rounds", 3, "Alternating rounds.")
flags.DEFINE_list("variants", ["auto"], "This tree's settings: a --precision value, +xla, +nometrics, +speN, "
                  "+tINTERxINTRA (its own thread pools, e.g. +t2x1; 0 is TensorFlow's choice).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("warmup_steps", 4, "Untimed steps first (tracing, allocation).")
flags.DEFINE_integer("steps", 12, "Timed steps.")
flags.DEFINE_string("threads", "own", "INTERxINTRA op threads of every measurement (0: TensorFlow's choice), or "
                    "'own': each tree's train.py default (the baseline's 0x0; this tree's auto).")
flags.DEFINE_integer("real_epochs", 0, "Also train this many real epochs per preset (0: skip).")
flags.DEFINE_string("data", os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz"), "Real data.")
flags.DEFINE_string("out", "benchmarks/results/train_throughput.json", "Result file.")
flags.DEFINE_bool("child", False, "Internal: measure one setting in this process and print JSON.")
flags.DEFINE_string("variant", "auto", "Internal: the child's variant.")
FLAGS = flags.FLAGS

REAL_TRAIN_IMAGES = 50000 - 5000
REAL_RECIPE = ["--batch_size", "128", "--lr", "0.05", "--warmup_epochs", "1", "--mix_prob", "0",
               "--val_size", "5000", "--seed", "0", "--verbose", "2"]  # benchmarks/cifar10_cpu.py


def parse_variant(variant: str) -> dict:
    parts = variant.split("+")
    spe = [int(p[3:]) for p in parts[1:] if p.startswith("spe") and p[3:].isdigit()]
    threads = [p[1:] for p in parts[1:] if p.startswith("t") and "x" in p]
    return {"precision": parts[0], "jit_compile": "on" if "xla" in parts[1:] else "off",
            "metrics": "nometrics" not in parts[1:], "steps_per_execution": spe[0] if spe else 1,
            "threads": threads[0] if threads else None}


def measure(preset: str, variant: str, batch_size: int, warmup: int, steps: int) -> dict:
    """Images/s of ``train.py``'s compiled train step on random data (this process)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tf_fusionnet.models.macs import exit_macs
    from tf_fusionnet.presets import build_model
    from tf_fusionnet.training.config import TrainConfig
    from tf_fusionnet.training.precision import resolve_jit_compile, resolve_precision
    from tf_fusionnet.training.trainer import compile_for_training, make_optimizer

    settings = parse_variant(variant)
    config = TrainConfig(preset=preset, batch_size=batch_size, epochs=10, precision=settings["precision"],
                         jit_compile=settings["jit_compile"])
    precision = resolve_precision(config.precision)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    model = build_model(preset)
    jit_compile = resolve_jit_compile(config.jit_compile)
    k = len(model.outputs)
    spe = settings["steps_per_execution"]
    if warmup % spe or steps % spe:
        raise ValueError(f"--warmup_steps and --steps must be multiples of steps_per_execution {spe}")
    if settings["metrics"]:
        compile_for_training(model, config, 100, jit_compile, steps_per_execution=spe)
    else:  # as compile_for_training, less the per-exit accuracy metrics
        loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing)
        model.compile(optimizer=make_optimizer(config, 100), loss=[loss] * k, jit_compile=jit_compile,
                      steps_per_execution=spe)
    x = np.random.RandomState(0).randn(batch_size, 32, 32, 3).astype("float32")
    y = tf.one_hot(np.random.RandomState(1).randint(0, 10, batch_size), 10).numpy()
    ds = tf.data.Dataset.from_tensors((x, tuple([y] * k))).repeat()
    times: list[float] = []

    class StepTimes(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter())

    model.fit(ds, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[StepTimes()])
    seconds = times[-1] - times[warmup // spe - 1]  # the callback runs once per execution of spe steps
    return {"images_per_second": round(steps * batch_size / seconds, 1), "seconds": round(seconds, 3),
            "precision": precision, "macs_per_image": exit_macs(model)[-1]}


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "1", "PYTHONWARNINGS": "ignore"}


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no result in the child's output:\n{text[-2000:]}")


BASELINE_DEFAULT_THREADS = "0x0"  # train.py's default before --inter_op_threads auto existed


def run_child(tree: str, preset: str, variant: str | None) -> dict:
    """One measurement in a fresh process (thread pools are fixed once TensorFlow starts).

    ``variant`` None: the baseline tree's own child, which knows no variants nor ``own``.
    """
    threads = FLAGS.threads
    if threads == "own" and variant is None:
        threads = BASELINE_DEFAULT_THREADS
    if variant is not None and parse_variant(variant)["threads"]:  # +tINTERxINTRA: this variant's own
        threads = parse_variant(variant)["threads"]
    cmd = [sys.executable, os.path.join(tree, "benchmarks", "train_throughput.py"), "--child",
           f"--presets={preset}", f"--threads={threads}", f"--batch_size={FLAGS.batch_size}",
           f"--steps={FLAGS.steps}", f"--warmup_steps={FLAGS.warmup_steps}"]
    if variant is not None:
        cmd.append(f"--variant={variant}")
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env=_env())
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return _last_json(done.stdout)


def baseline_macs(tree: str, preset: str) -> int | None:
    """Forward MACs per image of ``preset`` in the baseline tree; None where that tree lacks the preset
    (``ranet-cifar`` is newer than 9aaa325): the preset is then measured in this tree only."""
    code = ("import sys; from tf_fusionnet.presets import PRESETS, build_model; from tf_fusionnet.models.macs import "
            f"exit_macs; print(exit_macs(build_model({preset!r}))[-1] if {preset!r} in PRESETS else 'absent')")
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, env=_env(),
                          check=True)
    answer = done.stdout.strip().splitlines()[-1]
    return None if answer == "absent" else int(answer)


def real_epochs(preset: str, epochs: int, work: str) -> dict:
    """Trains ``epochs`` real epochs with train.py; the last epoch's timings from log.csv."""
    run = os.path.join(work, f"real-{preset}")
    threads = []
    if FLAGS.threads != "own":
        inter, intra = FLAGS.threads.split("x")
        threads = ["--inter_op_threads", inter, "--intra_op_threads", intra]
    cmd = [sys.executable, "train.py", "--preset", preset, "--dataset", os.path.abspath(FLAGS.data),
           "--epochs", str(epochs), "--output", run, *threads, *REAL_RECIPE]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=_env())
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - start
    with open(os.path.join(run, "log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    return {
        "command": " ".join(cmd[1:]),
        "epochs": epochs,
        "process_seconds": round(wall, 1),
        "per_epoch": [{k: float(r[k]) for k in ("epoch", "epoch_seconds", "train_seconds", "val_seconds",
                                                  "train_images_per_second")} for r in rows],
        "train_images_per_second": float(last["train_images_per_second"]),
        "epoch_images_per_second": round(REAL_TRAIN_IMAGES // 128 * 128 / float(last["epoch_seconds"]), 1),
    }


def summarize(rounds: list[dict], presets: list[str], variants: list[str], baseline: bool) -> list[dict]:
    table = []
    for preset in presets:
        rows = [r for r in rounds if r["preset"] == preset]
        for variant in variants:
            ips = [r["current"][variant]["images_per_second"] for r in rows]
            entry = {"preset": preset, "variant": variant, "precision": rows[0]["current"][variant]["precision"],
                     "images_per_second": ips, "median_images_per_second": statistics.median(ips)}
            if baseline and all("baseline" in r for r in rows):
                base = [r["baseline"]["images_per_second"] for r in rows]
                macs_now = rows[0]["current"][variant]["macs_per_image"]
                macs_then = rows[0]["baseline"]["macs_per_image"]
                speedups = [c / b for c, b in zip(ips, base)]
                work = [c * macs_now / (b * macs_then) for c, b in zip(ips, base)]
                entry.update({
                    "baseline_images_per_second": base,
                    "median_baseline_images_per_second": statistics.median(base),
                    "macs_per_image": macs_now, "baseline_macs_per_image": macs_then,
                    "speedup_per_round": [round(s, 3) for s in speedups],
                    "macs_per_second_speedup_per_round": [round(w, 3) for w in work],
                    "median_speedup": round(statistics.median(speedups), 3),
                    "median_macs_per_second_speedup": round(statistics.median(work), 3),
                })
            table.append(entry)
    return table


def main(argv):
    if FLAGS.child:
        import tensorflow as tf

        from tf_fusionnet.training.precision import resolve_threads

        if FLAGS.threads == "own":  # exactly what train.py does with its defaults
            inter, intra = resolve_threads(-1, -1)
        else:
            inter, intra = (int(v) for v in FLAGS.threads.split("x"))
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        result = measure(FLAGS.presets[0], FLAGS.variant, FLAGS.batch_size, FLAGS.warmup_steps, FLAGS.steps)
        print(json.dumps({"preset": FLAGS.presets[0], "variant": FLAGS.variant, "threads": f"{inter}x{intra}",
                          **result}))
        return 0
    from tf_fusionnet.utils import atomic_write_json, git_commit, library_versions, machine_info

    work = tempfile.mkdtemp(prefix="train_throughput-")
    baseline_tree = None
    try:
        if FLAGS.baseline:
            baseline_tree = os.path.join(work, "baseline")
            subprocess.run(["git", "worktree", "add", "--detach", baseline_tree, FLAGS.baseline], cwd=ROOT,
                           check=True, capture_output=True)
            base_macs = {p: baseline_macs(baseline_tree, p) for p in FLAGS.presets}
        rounds = []
        for round_index in range(1, FLAGS.rounds + 1):
            for preset in FLAGS.presets:
                entry = {"round": round_index, "preset": preset, "current": {}}
                if baseline_tree and base_macs[preset] is not None:
                    entry["baseline"] = {**run_child(baseline_tree, preset, None),
                                         "macs_per_image": base_macs[preset]}
                for variant in FLAGS.variants:
                    entry["current"][variant] = run_child(ROOT, preset, variant)
                rounds.append(entry)
                line = f"round {round_index}  {preset:22s}"
                if "baseline" in entry:
                    line += f" baseline {entry['baseline']['images_per_second']:6.1f}"
                for variant, r in entry["current"].items():
                    line += f"  {variant} {r['images_per_second']:6.1f}"
                print(line + "  img/s", flush=True)
        result = {
            "command": "python " + " ".join(sys.argv),
            "machine": machine_info(),
            "versions": library_versions(),
            "git_commit": git_commit(),
            "baseline_commit": FLAGS.baseline or None,
            "settings": {"batch_size": FLAGS.batch_size, "warmup_steps": FLAGS.warmup_steps, "steps": FLAGS.steps,
                         "threads": FLAGS.threads, "variants": FLAGS.variants,
                         "tf_enable_onednn_opts": os.environ["TF_ENABLE_ONEDNN_OPTS"]},
            "rounds": rounds,
            "summary": summarize(rounds, FLAGS.presets, FLAGS.variants, bool(baseline_tree)),
        }
        if FLAGS.real_epochs:
            result["real"] = {}
            for preset in FLAGS.presets:
                # Synthetic right before and right after, so a drift of the shared machine
                # during the real epochs shows as a gap between the two.
                before = run_child(ROOT, preset, FLAGS.variants[0])["images_per_second"]
                real = real_epochs(preset, FLAGS.real_epochs, work)
                after = run_child(ROOT, preset, FLAGS.variants[0])["images_per_second"]
                synthetic = (before + after) / 2
                real["synthetic_images_per_second"] = [before, after]
                real["real_over_synthetic"] = round(real["train_images_per_second"] / synthetic, 3)
                real["epoch_over_synthetic"] = round(real["epoch_images_per_second"] / synthetic, 3)
                result["real"][preset] = real
                print(f"real {preset:22s} train pass {real['train_images_per_second']:6.1f} img/s, synthetic "
                      f"{before:6.1f}/{after:6.1f} ({real['real_over_synthetic']:.2f}x); whole epoch with validation "
                      f"and checkpoints {real['per_epoch'][-1]['epoch_seconds']:.0f} s "
                      f"({real['epoch_over_synthetic']:.2f}x)", flush=True)
        for entry in result["summary"]:
            if "median_speedup" in entry:
                print(f"{entry['preset']:22s} {entry['variant']:16s} median {entry['median_images_per_second']:6.1f} "
                      f"vs {entry['median_baseline_images_per_second']:6.1f} img/s: {entry['median_speedup']:.2f}x "
                      f"({entry['median_macs_per_second_speedup']:.2f}x in MACs/s)")
        atomic_write_json(FLAGS.out, result)
        print(f"wrote {FLAGS.out}")
    finally:
        if baseline_tree:
            subprocess.run(["git", "worktree", "remove", "--force", baseline_tree], cwd=ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    app.run(main)
