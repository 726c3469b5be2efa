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
``steps_per_execution=N``, ``+tINTERxINTRA`` its own thread pools, ``+bnbf16`` bfloat16
BatchNorm inputs into the fused kernel without the float32 casts). Where the two commits build a
preset's network differently, MACs trained per second (images/s x forward MACs per
image) compare them at equal work; both are reported.

Real part (``--real_epochs N``): ``train.py`` with the CIFAR-10 benchmark recipe
(``benchmarks/cifar10_cpu.py``) on ``--data`` for N epochs; the last epoch's
training-pass throughput and its validation and checkpoint time come from the run's
``log.csv``, next to a synthetic measurement of the same preset and settings taken
right before.

``--recipe paper`` makes the real part the long runs' recipe instead (train.py's defaults:
batch 512, lr 0.1, CutMix/MixUp on every batch, label smoothing; 5,000 validation images) on
``--data`` (give the lossless CIFAR-100), at the precision and threads of the first variant.

Peer (``--peer``): in every round, next to each ``float32`` / ``mixed_bfloat16`` variant of
``msdnet-cifar-anytime``, a PyTorch MSDNet laid out as its authors' code
(``benchmarks/peers/msdnet_torch.py``; ``pip install torch==2.13.0``) trains the same number of
steps at the same batch on random data: float32, or bfloat16 under ``torch.autocast`` (the
authors' step: forward, the sum of the exits' cross-entropies, backward, SGD with momentum
0.9 and weight decay 1e-4). Its conv and linear MACs are checked against ours first.

Profile (``--profile_steps N``): a ``tf.profiler`` trace of N steps of every preset and
variant after the timed ones; the op time per TensorFlow op type (forward and gradient apart),
its share, and for the conv ops the GMAC/s they reach, go in the JSON under ``profile``.

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
flags.DEFINE_list("variants", ["auto"], "This tree's settings: a --precision value, +xla, +nometrics, +speN, +bnbf16 "
                  "(bfloat16 BatchNorm inputs not cast to float32), "
                  "+tINTERxINTRA (its own thread pools, e.g. +t2x1; 0 is TensorFlow's choice).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("warmup_steps", 4, "Untimed steps first (tracing, allocation).")
flags.DEFINE_integer("steps", 12, "Timed steps.")
flags.DEFINE_string("threads", "own", "INTERxINTRA op threads of every measurement (0: TensorFlow's choice), or "
                    "'own': each tree's train.py default (the baseline's 0x0; this tree's auto).")
flags.DEFINE_integer("real_epochs", 0, "Also train this many real epochs per preset (0: skip).")
flags.DEFINE_string("data", os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz"), "Real data.")
flags.DEFINE_string("out", "benchmarks/results/train_throughput.json", "Result file.")
flags.DEFINE_integer("num_classes", 10, "Classes of the synthetic labels (100 for the CIFAR-100 recipe).")
flags.DEFINE_enum("recipe", "cifar10_cpu", ["cifar10_cpu", "paper"], "Recipe of the real epochs.")
flags.DEFINE_bool("peer", False, "Also time the PyTorch MSDNet beside msdnet-cifar-anytime.")
flags.DEFINE_integer("profile_steps", 0, "Also profile this many steps of every preset and variant (0: skip).")
flags.DEFINE_list("profile_variants", [], "Profile only these of --variants (default: all).")
flags.DEFINE_bool("child", False, "Internal: measure one setting in this process and print JSON.")
flags.DEFINE_string("variant", "auto", "Internal: the child's variant.")
flags.DEFINE_bool("peer_child", False, "Internal: the child times the PyTorch peer.")
FLAGS = flags.FLAGS

REAL_TRAIN_IMAGES = 50000 - 5000
RECIPES = {
    "cifar10_cpu": ["--batch_size", "128", "--lr", "0.05", "--warmup_epochs", "1", "--mix_prob", "0",
                    "--val_size", "5000", "--seed", "0", "--verbose", "2"],  # benchmarks/cifar10_cpu.py
    # train.py's defaults are the long runs' recipe (cpu30/paper300.py); spelt out so a change of
    # default does not silently change what this measures.
    "paper": ["--batch_size", "512", "--lr", "0.1", "--mix_prob", "1.0", "--label_smoothing", "0.1",
              "--val_size", "5000", "--seed", "0", "--verbose", "2"],
}
PEER_PRESET = "msdnet-cifar-anytime"
PEER_PRECISIONS = {"float32": "float32", "mixed_bfloat16": "bfloat16"}


def recipe_batch_size(recipe: str) -> int:
    arguments = RECIPES[recipe]
    return int(arguments[arguments.index("--batch_size") + 1])


def parse_variant(variant: str) -> dict:
    parts = variant.split("+")
    spe = [int(p[3:]) for p in parts[1:] if p.startswith("spe") and p[3:].isdigit()]
    threads = [p[1:] for p in parts[1:] if p.startswith("t") and "x" in p]
    return {"precision": parts[0], "jit_compile": "on" if "xla" in parts[1:] else "off",
            "metrics": "nometrics" not in parts[1:], "steps_per_execution": spe[0] if spe else 1,
            "bfloat16_batchnorm": "bnbf16" in parts[1:],
            "threads": threads[0] if threads else None}


def conv_linear_macs_of(model, kinds: tuple = ()) -> int:
    """Forward MACs of one image in the model's conv and Dense layers alone (``node_macs``, the
    counter's own rules): the part of ``exit_macs`` a PyTorch forward hook on
    ``nn.Conv2d``/``nn.Linear`` also counts. ``kinds`` narrows it to some layer types."""
    import keras

    from tf_fusionnet.models.macs import node_macs

    kinds = kinds or (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    return sum(node_macs(node) for layer in model._flatten_layers(include_self=False)
               if isinstance(layer, kinds) for node in layer._inbound_nodes)


def op_time_table(logdir: str, steps: int, conv_macs_per_step: int, first_conv_macs_per_step: int) -> dict:
    """Op time per TensorFlow op type from a ``tf.profiler`` trace of ``steps`` train steps.

    Read by hand from the trace's XSpace (``*.xplane.pb``, TensorFlow's own protobuf) because the
    only library that tabulates it, xprof/tensorboard-plugin-profile, is a web app and not
    installed here. On CPU every executed op is an event ``scope/name:OpType`` on a
    ``tf_Compute`` thread line; ops under ``gradient_tape/`` are the backward pass. Op times of
    the inter-op threads add up, so the column sums to more than the wall clock.
    """
    import collections
    import glob

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        raise RuntimeError(f"the profiler wrote no trace under {logdir}")
    space = xplane_pb2.XSpace()
    with open(max(files, key=os.path.getmtime), "rb") as f:
        space.ParseFromString(f.read())
    picoseconds: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                scope, sep, op_type = name.rpartition(":")
                if not sep or "::" in name or not scope:  # executor bookkeeping, not an op
                    continue
                key = ("backward" if "gradient_tape/" in scope else "forward", op_type)
                picoseconds[key] += event.duration_ps
                counts[key] += 1
    total = sum(picoseconds.values())
    # MACs each conv op type does per step: the forward convs; the input gradient skips the
    # stem's first conv (nothing upstream needs it); the filter gradient does them all. The
    # depthwise convs (FusionNet's stem, under 1% of its MACs) are counted in with them.
    conv_macs = {"Conv2D": conv_macs_per_step, "FusedConv2D": conv_macs_per_step,
                 "Conv2DBackpropFilter": conv_macs_per_step,
                 "Conv2DBackpropInput": conv_macs_per_step - first_conv_macs_per_step}
    rows = []
    for (phase, op_type), ps in picoseconds.most_common():
        ms = ps / 1e9 / steps
        row = {"phase": phase, "op": op_type, "ms_per_step": round(ms, 2), "share": round(ps / total, 4),
               "ops_per_step": counts[(phase, op_type)] // steps}
        plain = op_type.replace("_MklNative", "").replace("_Mkl", "")
        if plain in conv_macs and ms > 0:
            row["gmacs_per_second"] = round(conv_macs[plain] / (ms / 1000) / 1e9, 1)
        rows.append(row)
    return {"op_ms_per_step": round(total / 1e9 / steps, 1), "ops": rows}


def measure(preset: str, variant: str, batch_size: int, warmup: int, steps: int, num_classes: int = 10,
            profile_steps: int = 0) -> dict:
    """Images/s of ``train.py``'s compiled train step on random data (this process)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tf_fusionnet.models.macs import exit_macs, node_macs
    from tf_fusionnet.presets import build_model
    from tf_fusionnet.training.config import TrainConfig
    from tf_fusionnet.training.precision import resolve_jit_compile, resolve_precision
    from tf_fusionnet.training.trainer import compile_for_training, make_optimizer

    settings = parse_variant(variant)
    if settings["bfloat16_batchnorm"]:  # +bnbf16: bfloat16 straight into the fused BatchNorm kernel
        from tf_fusionnet.models.layers import BatchNormalization

        BatchNormalization.bfloat16_in_float32 = False
    config = TrainConfig(preset=preset, batch_size=batch_size, epochs=10, precision=settings["precision"],
                         jit_compile=settings["jit_compile"])
    precision = resolve_precision(config.precision)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    model = build_model(preset, num_classes=num_classes)
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
    y = tf.one_hot(np.random.RandomState(1).randint(0, num_classes, batch_size), num_classes).numpy()
    ds = tf.data.Dataset.from_tensors((x, tuple([y] * k))).repeat()
    times: list[float] = []

    class StepTimes(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter())

    model.fit(ds, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[StepTimes()])
    seconds = times[-1] - times[warmup // spe - 1]  # the callback runs once per execution of spe steps
    result = {"images_per_second": round(steps * batch_size / seconds, 1), "seconds": round(seconds, 3),
              "precision": precision, "macs_per_image": exit_macs(model)[-1],
              "conv_linear_macs_per_image": conv_linear_macs_of(model)}
    if profile_steps:
        first_conv = next(layer for layer in model._flatten_layers(include_self=False)
                          if isinstance(layer, keras.layers.Conv2D))
        first_macs = node_macs(first_conv._inbound_nodes[0])
        dense = conv_linear_macs_of(model, (keras.layers.Dense,))
        logdir = tempfile.mkdtemp(prefix="train_profile-")
        try:
            tf.profiler.experimental.start(logdir)
            start = time.perf_counter()
            model.fit(ds, steps_per_epoch=profile_steps, epochs=1, verbose=0)
            wall = time.perf_counter() - start
            tf.profiler.experimental.stop()
            table = op_time_table(logdir, profile_steps, (result["conv_linear_macs_per_image"] - dense) * batch_size,
                                  first_macs * batch_size)
        finally:
            shutil.rmtree(logdir, ignore_errors=True)
        result["profile"] = {"steps": profile_steps, "wall_ms_per_step": round(wall / profile_steps * 1000, 1),
                             **table}
    return result


def measure_peer(precision: str, batch_size: int, warmup: int, steps: int, num_classes: int, threads: int) -> dict:
    """Images/s of the PyTorch MSDNet's training step (this process): the authors' loop body."""
    import torch

    from peers.msdnet_torch import MSDNetPeer, conv_linear_macs  # benchmarks/ is the script's sys.path[0]

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = MSDNetPeer(num_classes=num_classes)
    macs = conv_linear_macs(model)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    x = torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, num_classes, (batch_size,), generator=torch.Generator().manual_seed(1))
    autocast = precision == "bfloat16"

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = sum(criterion(logits, y) for logits in model(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss)  # the step's value is on the host: nothing left in flight
    seconds = time.perf_counter() - start
    return {"images_per_second": round(steps * batch_size / seconds, 1), "seconds": round(seconds, 3),
            "precision": precision, "threads": threads, "torch": torch.__version__,
            "conv_linear_macs_per_image": macs}


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "1", "PYTHONWARNINGS": "ignore"}


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no result in the child's output:\n{text[-2000:]}")


BASELINE_DEFAULT_THREADS = "0x0"  # train.py's default before --inter_op_threads auto existed


def run_child(tree: str, preset: str, variant: str | None, profile: bool = False) -> dict:
    """One measurement in a fresh process (thread pools are fixed once TensorFlow starts).

    ``variant`` None: the baseline tree's own child, which knows no variants nor ``own``.
    ``profile``: this tree's child also traces ``--profile_steps`` steps.
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
        cmd += [f"--variant={variant}", f"--num_classes={FLAGS.num_classes}"]
    if profile:
        cmd.append(f"--profile_steps={FLAGS.profile_steps}")
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env=_env())
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return _last_json(done.stdout)


def run_peer_child(precision: str) -> dict:
    """The PyTorch peer in a fresh process, 2 intra-op threads (PyTorch's default on 2 cores)."""
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "train_throughput.py"), "--child", "--peer_child",
           f"--variant={precision}", f"--batch_size={FLAGS.batch_size}", f"--steps={FLAGS.steps}",
           f"--warmup_steps={FLAGS.warmup_steps}", f"--num_classes={FLAGS.num_classes}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=_env())
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


def real_epochs(preset: str, epochs: int, work: str, variant: str) -> dict:
    """Trains ``epochs`` real epochs with train.py at ``variant``'s precision and threads (XLA
    and metrics as train.py has them); the last epoch's timings from log.csv."""
    run = os.path.join(work, f"real-{preset}")
    settings = parse_variant(variant)
    threads = []
    chosen = settings["threads"] or (FLAGS.threads if FLAGS.threads != "own" else None)
    if chosen:
        inter, intra = chosen.split("x")
        threads = ["--inter_op_threads", inter, "--intra_op_threads", intra]
    precision = [] if settings["precision"] == "auto" else ["--precision", settings["precision"]]
    cmd = [sys.executable, "train.py", "--preset", preset, "--dataset", os.path.abspath(FLAGS.data),
           "--epochs", str(epochs), "--output", run, *threads, *precision, *RECIPES[FLAGS.recipe]]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=_env())
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - start
    with open(os.path.join(run, "log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    batch = recipe_batch_size(FLAGS.recipe)
    return {
        "command": " ".join(cmd[1:]),
        "epochs": epochs,
        "process_seconds": round(wall, 1),
        "per_epoch": [{k: float(r[k]) for k in ("epoch", "epoch_seconds", "train_seconds", "val_seconds",
                                                  "train_images_per_second")} for r in rows],
        "train_images_per_second": float(last["train_images_per_second"]),
        "epoch_images_per_second": round(REAL_TRAIN_IMAGES // batch * batch / float(last["epoch_seconds"]), 1),
    }


def summarize_peer(rounds: list[dict]) -> list[dict]:
    """Ours over the PyTorch peer, round by round (each pair measured one after the other)."""
    table = []
    for variant in FLAGS.variants:
        pairs = [(r["current"][variant], r["peer"][variant]) for r in rounds if variant in r.get("peer", {})]
        if not pairs:
            continue
        ours, peer = pairs[0]
        ratios = [a["images_per_second"] / b["images_per_second"] for a, b in pairs]
        table.append({
            "preset": PEER_PRESET, "variant": variant, "peer_precision": peer["precision"],
            "images_per_second": [a["images_per_second"] for a, _ in pairs],
            "peer_images_per_second": [b["images_per_second"] for _, b in pairs],
            "ratio_per_round": [round(r, 3) for r in ratios], "median_ratio": round(statistics.median(ratios), 3),
            "conv_linear_macs_per_image": ours["conv_linear_macs_per_image"],
            "peer_conv_linear_macs_per_image": peer["conv_linear_macs_per_image"],
            "same_macs": ours["conv_linear_macs_per_image"] == peer["conv_linear_macs_per_image"],
        })
    return table


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
    if FLAGS.child and FLAGS.peer_child:
        result = measure_peer(FLAGS.variant, FLAGS.batch_size, FLAGS.warmup_steps, FLAGS.steps, FLAGS.num_classes,
                              threads=min(2, os.cpu_count() or 1))
        print(json.dumps({"preset": "msdnet-pytorch", "variant": FLAGS.variant, **result}))
        return 0
    if FLAGS.child:
        import tensorflow as tf

        from tf_fusionnet.training.precision import resolve_threads

        if FLAGS.threads == "own":  # exactly what train.py does with its defaults
            inter, intra = resolve_threads(-1, -1)
        else:
            inter, intra = (int(v) for v in FLAGS.threads.split("x"))
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        result = measure(FLAGS.presets[0], FLAGS.variant, FLAGS.batch_size, FLAGS.warmup_steps, FLAGS.steps,
                         FLAGS.num_classes, FLAGS.profile_steps)
        print(json.dumps({"preset": FLAGS.presets[0], "variant": FLAGS.variant, "threads": f"{inter}x{intra}",
                          **result}))
        return 0
    from tf_fusionnet.utils import atomic_write_json, git_commit, library_versions, machine_info

    recipe_batch = recipe_batch_size(FLAGS.recipe)
    if FLAGS.real_epochs and FLAGS.batch_size != recipe_batch:
        raise app.UsageError(f"--recipe {FLAGS.recipe} trains at batch {recipe_batch}: pass --batch_size "
                             f"{recipe_batch} so the synthetic rate it is read against has the same batch")
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
                    # The peer once per precision: beside the first variant of that precision.
                    peer_precision = PEER_PRECISIONS.get(parse_variant(variant)["precision"])
                    if (FLAGS.peer and preset == PEER_PRESET and peer_precision
                            and peer_precision not in [p["precision"] for p in entry.get("peer", {}).values()]):
                        peer = run_peer_child(peer_precision)
                        ours = entry["current"][variant]["conv_linear_macs_per_image"]
                        if peer["conv_linear_macs_per_image"] != ours:  # not the same network: no comparison
                            raise RuntimeError(f"the PyTorch MSDNet does {peer['conv_linear_macs_per_image']:,} conv "
                                               f"and linear MACs per image, {PEER_PRESET} {ours:,}")
                        entry.setdefault("peer", {})[variant] = peer
                rounds.append(entry)
                line = f"round {round_index}  {preset:22s}"
                if "baseline" in entry:
                    line += f" baseline {entry['baseline']['images_per_second']:6.1f}"
                for variant, r in entry["current"].items():
                    line += f"  {variant} {r['images_per_second']:6.1f}"
                    if variant in entry.get("peer", {}):
                        line += f" (PyTorch {entry['peer'][variant]['images_per_second']:6.1f})"
                print(line + "  img/s", flush=True)
        result = {
            "command": "python " + " ".join(sys.argv),
            "machine": machine_info(),
            "versions": library_versions(),
            "git_commit": git_commit(),
            "baseline_commit": FLAGS.baseline or None,
            "settings": {"batch_size": FLAGS.batch_size, "num_classes": FLAGS.num_classes, "recipe": FLAGS.recipe, "warmup_steps": FLAGS.warmup_steps, "steps": FLAGS.steps,
                         "threads": FLAGS.threads, "variants": FLAGS.variants,
                         "tf_enable_onednn_opts": os.environ["TF_ENABLE_ONEDNN_OPTS"]},
            "rounds": rounds,
            "summary": summarize(rounds, FLAGS.presets, FLAGS.variants, bool(baseline_tree)),
        }
        if FLAGS.peer:
            result["peer"] = summarize_peer(rounds)
        if FLAGS.profile_steps:
            result["profile"] = []
            for preset in FLAGS.presets:
                for variant in FLAGS.profile_variants or FLAGS.variants:
                    measured = run_child(ROOT, preset, variant, profile=True)
                    result["profile"].append({"preset": preset, "variant": variant,
                                              "images_per_second": measured["images_per_second"],
                                              **measured["profile"]})
                    top = ", ".join(f"{r['phase'][0]}:{r['op']} {100 * r['share']:.0f}%" for r in measured["profile"]["ops"][:4])
                    print(f"profile {preset:22s} {variant:16s} {measured['profile']['wall_ms_per_step']:7.1f} ms/step: {top}",
                          flush=True)
        if FLAGS.real_epochs:
            result["real"] = {}
            for preset in FLAGS.presets:
                # Synthetic right before and right after, so a drift of the shared machine
                # during the real epochs shows as a gap between the two.
                before = run_child(ROOT, preset, FLAGS.variants[0])["images_per_second"]
                real = real_epochs(preset, FLAGS.real_epochs, work, FLAGS.variants[0])
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
        for entry in result.get("peer", []):
            print(f"{PEER_PRESET:22s} {entry['variant']:16s} over PyTorch MSDNet ({entry['peer_precision']}): median "
                  f"{entry['median_ratio']:.2f}x, rounds {entry['ratio_per_round']}; same conv+linear MACs: "
                  f"{entry['same_macs']}")
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
