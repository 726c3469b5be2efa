"""Training a multi-exit model: the strategy, data, model, optimizer and callbacks of a run.

The run folder it writes (layout, lock, resume checks) is :mod:`tf_fusionnet.runs.folder`'s.
"""

from __future__ import annotations

import math
import os
from typing import Any

from tf_fusionnet.data.sources import DataError, load_dataset
from tf_fusionnet.data.image_size import parse_image_size
from tf_fusionnet.runs.folder import (RUN_MARKER, check_resume, check_same_architecture, claim_run_dir,
                                     finished_epochs, has_finished_epoch, last_logged_epoch, prepare_split,
                                     previous_run_config, record_owner)
from tf_fusionnet.training.config import TrainConfig, parse_exit_weights, parse_milestones
from tf_fusionnet.training.precision import resolve_jit_compile, resolve_precision, resolve_threads
from tf_fusionnet.utils import atomic_write_json, git_commit, library_versions


def setup_strategy(config: TrainConfig):
    """Creates the tf.distribute strategy; call before any other TensorFlow work."""
    import tensorflow as tf

    inter_op, intra_op = resolve_threads(config.inter_op_threads, config.intra_op_threads)
    for requested, value, getter, setter in (
        (config.inter_op_threads, inter_op, tf.config.threading.get_inter_op_parallelism_threads,
         tf.config.threading.set_inter_op_parallelism_threads),
        (config.intra_op_threads, intra_op, tf.config.threading.get_intra_op_parallelism_threads,
         tf.config.threading.set_intra_op_parallelism_threads),
    ):
        if not value or getter() == value:
            continue
        try:
            setter(value)
        except RuntimeError:
            # TensorFlow already ran in this process (train() called from Python after other
            # work): its thread pools are fixed. Auto keeps them; an explicit value is an error.
            if requested != -1:
                raise
    if config.num_cpu_devices > 1:
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * config.num_cpu_devices
        )
    if config.strategy == "default":
        return tf.distribute.get_strategy()
    if config.strategy == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    if config.strategy == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multiworker needs the TF_CONFIG environment variable (or start the "
                             "workers with python -m tf_fusionnet.launch)")
        if config.verbose != 3:  # tf.distribute logs every collective it builds at INFO
            import absl.logging

            absl.logging.set_verbosity(absl.logging.WARNING)
        from tf_fusionnet.training.distributed import check_own_port

        check_own_port(os.environ["TF_CONFIG"])
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except tf.errors.OpError as error:  # TensorFlow's message is often empty ("UnknownError()")
            raise ValueError(f"could not start this worker's TensorFlow server ({type(error).__name__}: "
                             f"{error.message or 'no detail given'}); check TF_CONFIG") from None
    raise ValueError(f"--strategy must be default, mirrored or multiworker, got {config.strategy!r}")


def _is_chief(strategy) -> tuple[bool, int]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True, 0
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    return (task_type == "chief" or (task_type == "worker" and task_id == 0)), task_id


def _initial_preset(preset_dir: str):
    """The trained preset ``--init_from`` names (a PixelClassifier), or a one-line ValueError."""
    from tf_fusionnet.models.pixels import PixelClassifier
    from tf_fusionnet.models.preset_files import PresetError, is_preset_dir, load_preset

    if not is_preset_dir(preset_dir):
        raise ValueError(f"--init_from {preset_dir}: not a preset folder (written by save_to_preset)")
    try:
        model = load_preset(preset_dir)
    except PresetError as error:
        raise ValueError(f"--init_from {error}") from None
    if not isinstance(model, PixelClassifier):
        raise ValueError(f"--init_from {preset_dir}: an untrained architecture (no normalisation); "
                         "give a trained preset")
    return model


def _copy_initial_weights(initial, model, config: TrainConfig) -> None:
    """Sets ``model``'s weights to the preset's; refuses another architecture with one line.
    A resumed run's own backup is restored over them afterwards, so this is the start only."""
    # Gradient equilibrium changes the training graph only (weightless layers), not the weights.
    ignore = ("name", "trainable", "gradient_equilibrium")
    want = {k: v for k, v in model.get_config().items() if k not in ignore}
    have = {k: v for k, v in initial.network.get_config().items() if k not in ignore}
    if type(initial.network) is not type(model) or want != have:
        diffs = ", ".join(f"{k}: {have.get(k)!r} -> {want.get(k)!r}" for k in sorted(set(want) | set(have))
                          if want.get(k) != have.get(k)) or f"{type(initial.network).__name__} -> {type(model).__name__}"
        raise ValueError(f"--init_from {config.init_from}: another architecture than --preset {config.preset} builds "
                         f"for this data ({diffs})")
    if bool(model.get_config().get("gradient_equilibrium")) == bool(initial.network.get_config().get("gradient_equilibrium")):
        model.set_weights(initial.network.get_weights())
        return
    for layer in model.layers:  # by name: the weightless layers may order the graph differently
        if layer.weights:
            layer.set_weights(initial.network.get_layer(layer.name).get_weights())


def make_optimizer(config: TrainConfig, steps_per_epoch: int):
    """SGD with linear warmup then cosine decay to 0.

    ``weight_decay_style="coupled"`` (default) is PyTorch's SGD (:class:`TorchSGD`), the
    optimizer of the official MSDNet recipe the paper follows; ``"decoupled"`` is Keras's SGD
    with its decoupled decay. ``decay_norm_and_bias=False`` exempts BatchNorm and biases.
    """
    import keras

    from tf_fusionnet.training.optimizers import TorchSGD


    peak = config.peak_lr()
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(int(round(config.warmup() * steps_per_epoch)), total - 1)
    if config.lr_schedule == "step":  # the official MSDNet code: lr * factor**(milestones passed), per epoch
        # Keras keeps the earlier value at a boundary step itself; epoch m's first step is m * steps_per_epoch.
        boundaries = [m * steps_per_epoch - 1 for m in parse_milestones(config.lr_milestones, config.epochs)]
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [peak * config.lr_step_factor ** k for k in range(len(boundaries) + 1)])
    elif warmup > 0:
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            decay_steps=total - warmup,
            alpha=0.0,
            warmup_target=peak,
            warmup_steps=warmup,
        )
    else:
        schedule = keras.optimizers.schedules.CosineDecay(peak, decay_steps=total, alpha=0.0)
    excluded = [] if config.decay_norm_and_bias else ["gamma", "beta", "bias"]
    if config.weight_decay_style == "coupled":
        return TorchSGD(
            learning_rate=schedule, momentum=config.momentum, weight_decay=config.weight_decay,
            exclude_from_decay=excluded,
        )
    if config.weight_decay_style != "decoupled":
        raise ValueError(f"--weight_decay_style must be coupled or decoupled, got {config.weight_decay_style!r}")
    optimizer = keras.optimizers.SGD(
        learning_rate=schedule, momentum=config.momentum, weight_decay=config.weight_decay or None
    )
    if config.weight_decay and excluded:
        optimizer.exclude_from_weight_decay(var_names=excluded)
    return optimizer


def compile_for_training(model, config: TrainConfig, steps_per_epoch: int, jit_compile: bool,
                         steps_per_execution: int = 1) -> None:
    """Compiles ``model`` as train.py trains it: optimizer, per-exit loss and weights, exit metrics,
    and the exit distillation term (``model.training_loss_term``) when ``config.distill_alpha`` > 0.

    ``steps_per_execution`` > 1 is for benchmarks/train_throughput.py's ``+spe`` variant only."""
    import keras

    import functools

    from tf_fusionnet.training.distillation import distillation_loss

    num_exits = len(model.outputs)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing)
    weights = parse_exit_weights(config.exit_weights, num_exits)
    distill = config.distillation()
    if distill.enabled and num_exits > 1:
        model.training_loss_term = functools.partial(distillation_loss, distill=distill, exit_weights=tuple(weights))
        weights = distill.hard_weights(weights)
    else:
        model.training_loss_term = None
    model.compile(
        optimizer=make_optimizer(config, max(1, steps_per_epoch)),
        loss=[loss] * num_exits,
        loss_weights=weights,
        metrics=[[keras.metrics.CategoricalAccuracy(name="accuracy")] for _ in range(num_exits)],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )


def exit_accuracy_keys(num_exits: int, validation: bool) -> list[str]:
    prefix = "val_" if validation else ""
    return [f"{prefix}exit_{k}_accuracy" for k in range(1, num_exits + 1)]


def precheck(config: TrainConfig) -> None:
    """Every check that needs no TensorFlow: settings, preset, data path, output folder and lock.

    Run before TensorFlow loads, so a user's mistake is answered in about a second.
    """
    from tf_fusionnet.presets import PRESETS

    config.validate()
    parse_image_size(config.image_size)
    parse_exit_weights(config.exit_weights)
    if config.lr_schedule == "step":
        parse_milestones(config.lr_milestones, config.epochs)
    if config.preset not in PRESETS:
        raise ValueError(f"Unknown preset {config.preset!r}. Available: {', '.join(PRESETS)}.")
    if config.dataset not in ("sample", "cifar10", "cifar100") and not os.path.exists(config.dataset):
        raise DataError(f"--dataset {config.dataset!r}: no such file or folder (use sample, cifar10, cifar100 "
                        "or a path to a local copy)")
    if config.init_from and not os.path.isfile(os.path.join(config.init_from, "metadata.json")):
        raise ValueError(f"--init_from {config.init_from}: not a preset folder (no metadata.json; write one "
                         "with save_to_preset)")
    if config.strategy != "multiworker":  # a worker's folder depends on its TF_CONFIG role
        run_dir = config.run_dir()
        created = not os.path.exists(run_dir)
        os.close(claim_run_dir(run_dir))
        if created:  # a check only: train() makes the folder, and removes it if it fails before writing
            os.remove(os.path.join(run_dir, RUN_MARKER))
            os.rmdir(run_dir)


def train(config: TrainConfig) -> dict[str, Any]:
    """Runs (or resumes) a training run; returns the last epoch's logs and the run dir."""
    precheck(config)
    strategy = setup_strategy(config)
    run_dir = config.run_dir()
    is_chief, task_id = _is_chief(strategy)
    if not is_chief:  # other workers write their copies aside, as Keras recommends
        run_dir = os.path.join(run_dir, f".worker{task_id}")
    created = not os.path.exists(run_dir)
    lock = claim_run_dir(run_dir)
    try:
        return _train_locked(config, strategy, run_dir, lock)
    except BaseException:
        # A run refused or stopped before its first epoch finished (a bad image found while
        # decoding, a batch larger than the data, Ctrl-C during loading) leaves nothing behind
        # in a folder this call made: everything in it is this call's, and the corrected command
        # must find no split of other data waiting for it.
        if created and not has_finished_epoch(run_dir):
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        os.close(lock)


def _thread_text() -> str:
    import tensorflow as tf

    inter, intra = (tf.config.threading.get_inter_op_parallelism_threads(),
                    tf.config.threading.get_intra_op_parallelism_threads())
    return f"{inter or 'default'} inter-op x {intra or 'default'} intra-op"


def _train_locked(config: TrainConfig, strategy, run_dir: str, lock: int) -> dict[str, Any]:
    import keras

    check_resume(run_dir, config.to_dict())
    precision = resolve_precision(config.precision, previous_run_config(run_dir))
    jit_compile = resolve_jit_compile(config.jit_compile)
    if config.verbose and has_finished_epoch(run_dir) and finished_epochs(run_dir):
        print(f"resumed from epoch {finished_epochs(run_dir)} of {config.epochs}", flush=True)
    if config.verbose:
        print(f"precision {precision}, XLA {'on' if jit_compile else 'off'}, threads {_thread_text()}", flush=True)

    keras.utils.set_random_seed(config.seed)
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        return _train_with_policy(config, strategy, run_dir, lock, precision, jit_compile)
    finally:
        keras.mixed_precision.set_global_policy(policy)  # the process's other models stay as they were


def _train_with_policy(config: TrainConfig, strategy, run_dir: str, lock: int, precision: str,
                       jit_compile: bool) -> dict[str, Any]:
    import sys

    import keras

    from tf_fusionnet.data.pipeline import AugmentConfig, make_eval_dataset, make_train_dataset, normalization_stats
    from tf_fusionnet.models.macs import exit_macs
    from tf_fusionnet.presets import build_model
    from tf_fusionnet.training.callbacks import (AtomicBackupAndRestore, AtomicModelCheckpoint, EpochCSVLog,
                                                 StopOnNonFiniteLoss)

    data = load_dataset(config.dataset, config.tfds_data_dir or None, parse_image_size(config.image_size),
                        channels=config.channels)
    for note in data.notes:
        print(note, flush=True)
    is_chief, _ = _is_chief(strategy)
    # Every worker trains on the chief's split; only the chief writes the run's files.
    train_idx, val_idx = prepare_split(data, config.run_dir(), config.val_size, config.seed, write=is_chief)
    pad = config.pad if config.pad >= 0 else min(data.image_shape[:2]) // 8
    if config.random_crop and pad > min(data.image_shape[:2]) // 2:
        raise ValueError(f"--pad {config.pad} is more than half the images' side ({data.image_shape[0]}x"
                         f"{data.image_shape[1]}): the random crops would be mostly padding; use at most "
                         f"{min(data.image_shape[:2]) // 2} (the default is the side // 8)")
    if len(train_idx) < config.batch_size:
        raise ValueError(f"--batch_size {config.batch_size} is larger than the {len(train_idx)} training images "
                         "(after the validation split); pass a smaller --batch_size")
    x_train, y_train = data.train_images[train_idx], data.train_labels[train_idx]
    x_val, y_val = data.train_images[val_idx], data.train_labels[val_idx]
    initial = _initial_preset(config.init_from) if config.init_from else None
    # A fine-tuned model keeps the normalisation its weights were trained under.
    mean, std = (initial.mean, initial.std) if initial is not None else normalization_stats(x_train)
    write_json = atomic_write_json if is_chief else (lambda path, value: None)
    write_json(
        os.path.join(run_dir, "preprocessing.json"),
        {
            "image_shape": list(data.image_shape),
            "mean": mean,
            "std": std,
            "class_names": data.class_names,
            "dataset_source": data.source,
        },
    )

    with strategy.scope():
        model = build_model(config.preset, num_classes=data.num_classes, image_shape=data.image_shape,
                            **config.model_overrides())
        num_exits = len(model.outputs)
        compile_for_training(model, config, len(x_train) // config.batch_size, jit_compile)

    check_same_architecture(run_dir, model)
    if initial is not None:
        _copy_initial_weights(initial, model, config)
    record_owner(lock)  # the run goes ahead: from here on its files change
    macs = exit_macs(model)
    write_json(
        os.path.join(run_dir, "config.json"),
        {
            "train": config.to_dict(),
            "preset": config.preset,
            "model_class": type(model).__name__,
            "model_config": model.get_config(),
            "num_classes": data.num_classes,
            "exit_macs": macs,
            "peak_lr": config.peak_lr(),
            "warmup_epochs": config.warmup(),
            "num_train_images": int(len(train_idx)),
            "num_val_images": int(len(val_idx)),
            "num_test_images": int(len(data.test_labels)),
            "versions": library_versions(),
            "git_commit": git_commit(),
            "strategy": config.strategy,
            "precision": precision,
            "jit_compile": jit_compile,
            "threads": _thread_text(),
            "num_replicas": strategy.num_replicas_in_sync,
        },
    )

    augment = AugmentConfig(
        random_crop=config.random_crop, pad=config.pad, flip=config.flip, mix_prob=config.mix_prob,
        cutmix_share=config.cutmix_share, mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha,
    )
    def train_dataset(images, labels, batch_size, seed):
        return make_train_dataset(images, labels, num_classes=data.num_classes, num_exits=num_exits,
                                  batch_size=batch_size, mean=mean, std=std, augment=augment, seed=seed)

    val_ds = None
    if len(val_idx):
        val_ds = make_eval_dataset(
            x_val, y_val, batch_size=min(config.batch_size, 1000), mean=mean, std=std,
            num_classes=data.num_classes, num_exits=num_exits,
        )

    last_val_key = exit_accuracy_keys(num_exits, True)[-1]
    if config.strategy == "multiworker":
        from tf_fusionnet.training.distributed import LoopData, fit_multiworker

        logs = fit_multiworker(
            model, strategy, config, LoopData(x_train, y_train, train_dataset, val_ds), run_dir=run_dir,
            is_chief=is_chief, checkpoint_steps=config.checkpoint_steps,
            callbacks=[
                EpochCSVLog(os.path.join(run_dir, "log.csv"), config.batch_size),
                AtomicModelCheckpoint(os.path.join(run_dir, "model.keras"),
                                      os.path.join(run_dir, "best.keras") if val_ds is not None else None,
                                      monitor=last_val_key),
            ])
        if not logs:
            logs = last_logged_epoch(os.path.join(config.run_dir(), "log.csv"))
        return {"run_dir": config.run_dir(), "logs": logs, "exit_macs": macs, "num_exits": num_exits}
    train_ds = train_dataset(x_train, y_train, config.batch_size, config.seed)
    callbacks = [
        # Order matters: a non-finite loss stops the epoch before anything is saved; the log and
        # the models of an epoch are on disk before the backup marks the epoch as done.
        StopOnNonFiniteLoss(),
        EpochCSVLog(os.path.join(run_dir, "log.csv"), config.batch_size),
        AtomicModelCheckpoint(
            os.path.join(run_dir, "model.keras"),
            os.path.join(run_dir, "best.keras") if val_ds is not None else None,
            monitor=last_val_key,
        ),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), write_graph=False),
        AtomicBackupAndRestore(os.path.join(run_dir, "backup")),
    ]
    history = model.fit(
        train_ds, epochs=config.epochs, validation_data=val_ds, callbacks=callbacks,
        verbose=config.keras_verbose(sys.stdout.isatty()),
        shuffle=False,  # make_train_dataset shuffles; Keras would only warn that it ignores this
    )
    logs = {k: float(v[-1]) for k, v in history.history.items() if v}
    if not logs:  # resumed a finished run: report its last logged epoch
        logs = last_logged_epoch(os.path.join(run_dir, "log.csv"))
    return {"run_dir": run_dir, "logs": logs, "exit_macs": macs, "num_exits": num_exits}


def format_exit_table(result: dict[str, Any]) -> str:
    """Per-exit MACs and train/validation accuracy of the last epoch, as text."""
    logs = result["logs"]
    lines = [f"{'exit':>4}  {'MACs (M)':>9}  {'train acc':>9}  {'val acc':>8}"]
    for k, macs in enumerate(result["exit_macs"], start=1):
        train = logs.get(f"exit_{k}_accuracy")
        val = logs.get(f"val_exit_{k}_accuracy")
        fmt = lambda v: f"{100 * v:8.2f}%" if v is not None and not math.isnan(v) else "       -"
        lines.append(f"{k:>4}  {macs / 1e6:>9.2f}  {fmt(train):>9}  {fmt(val):>8}")
    return "\n".join(lines)


__all__ = ["train", "precheck", "compile_for_training", "format_exit_table", "make_optimizer", "setup_strategy", "DataError"]
