"""Training-step throughput (images/s) per preset on random data, after warm-up.

    python benchmarks/train_throughput.py [--presets a,b] [--batch_size 128] [--steps 20]

Uses the same compile settings as train.py (SGD + cosine schedule with weight
decay, label-smoothed cross-entropy on every exit, per-exit accuracy metrics)
and writes benchmarks/results/train_throughput.json.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_fusionnet.console import setup_environment  # noqa: E402  (before TensorFlow loads)

setup_environment()

import json
import subprocess
import time

from absl import app, flags

flags.DEFINE_string("presets", "msdnet-cifar-anytime,fusionnet-cifar,msdnet-cifar-budgeted", "Comma-separated presets.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("warmup_steps", 5, "Untimed steps first (tracing, allocation).")
flags.DEFINE_integer("steps", 20, "Timed steps.")
flags.DEFINE_bool("jit_compile", False, "XLA.")
flags.DEFINE_string("threads", "0x0,2x1", "Comma-separated INTERxINTRA op-thread settings to try (0: TF's choice).")
flags.DEFINE_string("out", "benchmarks/results/train_throughput.json", "Result file.")
flags.DEFINE_bool("child", False, "Internal: measure one setting and print JSON.")
FLAGS = flags.FLAGS


def measure(preset: str, batch_size: int, warmup: int, steps: int, jit_compile: bool) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from tf_fusionnet.presets import build_model
    from tf_fusionnet.training.config import TrainConfig
    from tf_fusionnet.training.trainer import make_optimizer

    keras.utils.set_random_seed(0)
    model = build_model(preset)
    k = len(model.outputs)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    model.compile(
        optimizer=make_optimizer(TrainConfig(batch_size=batch_size, epochs=10), 100),
        loss=[loss] * k,
        metrics=[[keras.metrics.CategoricalAccuracy(name="accuracy")] for _ in range(k)],
        jit_compile=jit_compile,
    )
    x = np.random.RandomState(0).randn(batch_size, 32, 32, 3).astype("float32")
    y = tf.one_hot(np.random.RandomState(1).randint(0, 10, batch_size), 10).numpy()
    ds = tf.data.Dataset.from_tensors((x, tuple([y] * k))).repeat()

    class StepTimes(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter())

    times: list[float] = []
    model.fit(ds, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[StepTimes()])
    seconds = times[-1] - times[warmup - 1]  # the last `steps` steps, after warm-up
    return {
        "preset": preset,
        "batch_size": batch_size,
        "timed_steps": steps,
        "seconds": round(seconds, 3),
        "images_per_second": round(steps * batch_size / seconds, 1),
    }


def main(argv):
    if FLAGS.child:
        import tensorflow as tf

        inter, intra = (int(v) for v in FLAGS.threads.split("x"))
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        r = measure(FLAGS.presets, FLAGS.batch_size, FLAGS.warmup_steps, FLAGS.steps, FLAGS.jit_compile)
        print(json.dumps({**r, "threads": FLAGS.threads}))
        return
    from tf_fusionnet.utils import atomic_write_json, git_commit, library_versions

    results = []
    for threads in FLAGS.threads.split(","):
        for preset in FLAGS.presets.split(","):
            # Thread pools are fixed once TensorFlow starts: one subprocess per setting.
            cmd = [sys.executable, os.path.abspath(__file__), f"--presets={preset}", f"--threads={threads}",
                   f"--batch_size={FLAGS.batch_size}", f"--steps={FLAGS.steps}",
                   f"--warmup_steps={FLAGS.warmup_steps}", f"--jit_compile={FLAGS.jit_compile}", "--child"]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{preset:24s} threads {threads:5s} {r['images_per_second']:8.1f} img/s  "
                  f"(batch {r['batch_size']}, {r['timed_steps']} steps in {r['seconds']} s)", flush=True)
            results.append(r)
    atomic_write_json(FLAGS.out, {
        "command": "python " + " ".join(sys.argv),
        "cpu_count": os.cpu_count(),
        "jit_compile": FLAGS.jit_compile,
        "tf_enable_onednn_opts": os.environ["TF_ENABLE_ONEDNN_OPTS"],
        "versions": library_versions(),
        "git_commit": git_commit(),
        "results": results,
    })
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
