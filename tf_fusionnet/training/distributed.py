"""Training under ``MultiWorkerMirroredStrategy`` with a custom step.

Keras 3's ``model.fit`` cannot consume ``MultiWorkerMirroredStrategy`` input (it receives
``PerReplica`` values; keras-team/keras#20585, open upstream), so multi-worker runs use this loop:
``strategy.run`` of one step on a ``distribute_datasets_from_function`` dataset sharded per worker,
the per-exit losses averaged over the *global* batch (``tf.nn.compute_average_loss``) and the
optimizer's ``apply_gradients`` in the replica context, which all-reduces the gradients. The recipe
is ``fit``'s: the same compiled optimizer (schedule, weight decay), per-exit loss weights, label
smoothing, augmentation and CutMix/MixUp pipeline, and the same global batch split across replicas.

Fault tolerance: a ``tf.train.Checkpoint`` of the model, the optimizer (its iteration count drives
the learning-rate schedule, so the schedule continues where it stopped) and the position in the
run (epoch, step) is written every epoch and, with ``checkpoint_steps``, every N steps. Every
worker saves (the chief into ``RUN/backup/``, the others into their own folder, as
``tf.distribute`` requires) and every worker restores the chief's checkpoint; the restored
positions are compared across workers before training goes on. Each epoch's data order is a
function of the seed and the epoch, so a resumed epoch skips exactly the batches already trained.

Only the chief writes the run's files (``log.csv``, ``model.keras``, ``best.keras``) and runs the
validation pass; the others wait for it at the next step's all-reduce.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


def check_own_port(tf_config: str) -> None:
    """Refuses a ``TF_CONFIG`` that TensorFlow could not start from, in one line: unreadable, a
    task missing from the cluster, or this task's port in use (TensorFlow says only
    "UnknownError()" then, after 30 lines of C++ log).

    TensorFlow's gRPC server listens on every interface at the port, whatever host TF_CONFIG
    names, with SO_REUSEADDR; the probe binds the same way, so a port in TIME_WAIT passes and
    one another process listens on does not."""
    import socket

    try:
        spec = json.loads(tf_config)
        task = spec["task"]
        address = spec["cluster"][task["type"]][int(task["index"])]
        port = int(str(address).rsplit(":", 1)[1])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise ValueError("TF_CONFIG must be JSON with cluster.{type}[index] = 'host:port' for this task's "
                         "task.type and task.index") from None
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("", port))
    except OSError as error:
        raise ValueError(f"TF_CONFIG: port {port} of {task['type']} {task['index']} ({address}) cannot be used on "
                         f"this machine ({error.strerror or error}): another process listens there; pick a free "
                         "port or stop that process") from None
    finally:
        probe.close()


LOST_WORKER_HINT = "re-run the same command on every worker to resume from the last checkpoint"


class WorkerLostError(RuntimeError):
    """A peer stopped answering (killed, crashed or unreachable)."""


@dataclass
class LoopData:
    """What the loop trains on: training arrays (already split) and the validation dataset."""

    x_train: np.ndarray
    y_train: np.ndarray
    make_train_dataset: Callable[..., Any]  # (images, labels, batch_size, seed) -> tf.data.Dataset
    val_ds: Any | None


def steps_per_epoch(num_images: int, global_batch: int, num_workers: int) -> int:
    """Steps every worker can take on its shard (shards differ by at most one image)."""
    per_worker_images = num_images // num_workers
    return per_worker_images // (global_batch // num_workers)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def _lost_worker_types():
    import tensorflow as tf

    return (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError, tf.errors.InternalError)


def _is_lost_worker(error: BaseException) -> bool:
    """Collective failures caused by a peer; an InternalError only when it names one."""
    import tensorflow as tf

    if isinstance(error, tf.errors.InternalError):
        return "/job:" in str(error)
    return True


def fit_multiworker(model, strategy, config, data: LoopData, *, run_dir: str, is_chief: bool,
                    callbacks: list, checkpoint_steps: int = 0) -> dict[str, float]:
    """Trains ``model`` (compiled by ``compile_for_training`` under ``strategy.scope()``).

    Returns the last epoch's logs, keyed as ``fit``'s history (``exit_k_accuracy``, ``loss``,
    ``val_exit_k_accuracy``, ...).
    """
    try:
        return _fit(model, strategy, config, data, run_dir=run_dir, is_chief=is_chief, callbacks=callbacks,
                    checkpoint_steps=checkpoint_steps)
    except _lost_worker_types() as error:
        if not _is_lost_worker(error):
            raise
        raise WorkerLostError(describe_lost_worker(error)) from None


def describe_lost_worker(error: BaseException) -> str:
    """One line for a collective that failed because a peer went away."""
    import re

    text = str(error)
    peers = sorted(set(re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", text)))
    who = ", ".join(f"{job} {task}" for job, task in peers) or "another worker"
    reason = next((r for r in ("Connection refused", "Socket closed", "heartbeat", "Deadline Exceeded", "timed out")
                   if r.lower() in text.lower()), type(error).__name__)
    return f"lost contact with {who} during training ({reason}); {LOST_WORKER_HINT}"


def _fit(model, strategy, config, data: LoopData, *, run_dir, is_chief, callbacks, checkpoint_steps):
    import keras
    import tensorflow as tf

    from tf_fusionnet.training.callbacks import check_finite_loss
    from tf_fusionnet.training.config import parse_exit_weights

    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    num_workers = len(spec.get("worker", [])) + len(spec.get("chief", []))
    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size
    if global_batch % replicas:
        raise ValueError(f"--batch_size {global_batch} must be a multiple of the {replicas} replicas "
                         "(every replica gets an equal share of the global batch)")
    per_replica = global_batch // replicas
    steps = steps_per_epoch(len(data.x_train), global_batch, num_workers)
    if steps < 1:
        raise ValueError(f"--batch_size {global_batch} is larger than a worker's {len(data.x_train) // num_workers} "
                         "training images; pass a smaller --batch_size")
    num_exits = len(model.outputs)
    weights = parse_exit_weights(config.exit_weights, num_exits)
    distill = config.distillation()
    distilling = distill.enabled and num_exits > 1
    hard_weights = distill.hard_weights(weights) if distilling else weights
    optimizer = model.optimizer

    with strategy.scope():
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="run_epoch")
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="run_step_in_epoch")
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var, step=step_var)
    chief_dir = os.path.join(config.run_dir(), "backup", "multiworker")
    own_dir = chief_dir if is_chief else os.path.join(run_dir, "backup")
    manager = tf.train.CheckpointManager(checkpoint, own_dir, max_to_keep=1)
    latest = tf.train.latest_checkpoint(chief_dir)
    if latest:
        checkpoint.restore(latest).expect_partial()
    _check_same_position(strategy, epoch_var, step_var)
    start_epoch, start_step = int(epoch_var.numpy()), int(step_var.numpy())
    if latest and is_chief and config.verbose:
        print(f"resumed from {latest}: epoch {start_epoch + 1}, step {start_step} of {steps}", flush=True)

    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing,
                                                   reduction=None)

    def step_fn(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss, per_exit = replica_loss(logits, labels, loss_fn, weights, distill if distilling else None,
                                          global_batch)
            scaled = optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        truth = tf.argmax(labels[0], axis=-1)
        correct = [tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits[k], axis=-1), truth), tf.float32))
                   for k in range(num_exits)]
        return tf.stack(per_exit), tf.stack(correct), tf.cast(tf.shape(images)[0], tf.float32)

    @tf.function
    def train_step(iterator):
        per_exit, correct, count = strategy.run(step_fn, args=next(iterator))
        reduce = lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
        return reduce(per_exit), reduce(correct), reduce(count)

    @tf.function
    def eval_step(images):
        return [tf.cast(t, tf.float32) for t in model(images, training=False)]

    callback_list = keras.callbacks.CallbackList(callbacks, model=model) if is_chief else None
    logs: dict[str, float] = {}
    if callback_list:
        callback_list.on_train_begin()
    for epoch in range(start_epoch, config.epochs):
        first_step = start_step if epoch == start_epoch else 0

        def dataset_fn(context, epoch=epoch, first_step=first_step):
            shard = slice(context.input_pipeline_id, None, context.num_input_pipelines)
            ds = data.make_train_dataset(data.x_train[shard], data.y_train[shard], per_replica,
                                         _epoch_seed(config.seed, epoch))
            return ds.take(steps).skip(first_step)

        iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
        if callback_list:
            callback_list.on_epoch_begin(epoch)
        loss_sums = np.zeros(num_exits)
        correct_sums = np.zeros(num_exits)
        seen = 0.0
        shown = time.perf_counter()
        for step in range(first_step, steps):
            per_exit, correct, count = train_step(iterator)
            check_finite_loss(float(np.dot(hard_weights, per_exit.numpy())), epoch + 1, step + 1)
            loss_sums += per_exit.numpy() * global_batch  # averages over the global batch, back to sums
            correct_sums += correct.numpy()
            seen += float(count.numpy())
            if callback_list:
                callback_list.on_train_batch_end(step)
            done = step + 1
            if checkpoint_steps and done % checkpoint_steps == 0 and done < steps:
                epoch_var.assign(epoch)
                step_var.assign(done)
                manager.save(checkpoint_number=epoch * steps + done)
            if is_chief and config.verbose and (time.perf_counter() - shown > 30 or done == steps):
                shown = time.perf_counter()
                print(f"epoch {epoch + 1}/{config.epochs} step {done}/{steps}", flush=True)
        _average_non_trainable(strategy, model)  # before validation, so it scores the model that is saved
        logs = {}
        if seen:
            for k in range(num_exits):
                logs[f"exit_{k + 1}_loss"] = loss_sums[k] / seen
                logs[f"exit_{k + 1}_accuracy"] = correct_sums[k] / seen
            logs["loss"] = float(sum(w * logs[f"exit_{k + 1}_loss"] for k, w in enumerate(hard_weights)))
        if is_chief and data.val_ds is not None:
            callback_list.on_test_begin()
            logs.update(_validate(eval_step, data.val_ds, num_exits, loss_fn, hard_weights))
        epoch_var.assign(epoch + 1)
        step_var.assign(0)
        # The epoch's files first, then the checkpoint that marks it done (as fit's callbacks do).
        if callback_list:
            callback_list.on_epoch_end(epoch, logs)
        manager.save(checkpoint_number=(epoch + 1) * steps)
        if is_chief and config.verbose:
            print(f"epoch {epoch + 1}/{config.epochs}: " + " - ".join(
                f"{k}: {v:.4f}" for k, v in sorted(logs.items())), flush=True)
    if callback_list:
        callback_list.on_train_end(logs)
    return {k: float(v) for k, v in logs.items()}


def replica_loss(logits, labels, loss_fn, exit_weights, distill, global_batch: int):
    """One replica's share of the step's loss, and each exit's cross-entropy share.

    The loss ``fit`` minimises (``compile_for_training``): each exit's cross-entropy times its
    weight (``(1 - alpha)`` times it under exit distillation, except the last exit's), plus the
    distillation term; every mean is over the *global* batch, so the all-reduced gradient is
    the global batch's.
    """
    import tensorflow as tf

    hard = distill.hard_weights(exit_weights) if distill else list(exit_weights)
    per_exit = [tf.nn.compute_average_loss(loss_fn(labels[k], tf.cast(logits[k], tf.float32)),
                                           global_batch_size=global_batch) for k in range(len(logits))]
    loss = tf.add_n([w * l for w, l in zip(hard, per_exit)])
    if distill:
        from tf_fusionnet.training.distillation import distillation_terms

        soft = [tf.nn.compute_average_loss(t, global_batch_size=global_batch)
                for t in distillation_terms(logits, distill)]
        loss += tf.add_n([w * t for w, t in zip(distill.soft_weights(exit_weights), soft)])
    return loss, per_exit


def _validate(eval_step, val_ds, num_exits: int, loss_fn, weights) -> dict[str, float]:
    loss_sums = np.zeros(num_exits)
    correct = np.zeros(num_exits)
    count = 0
    for images, labels in val_ds:
        logits = eval_step(images)
        truth = np.argmax(labels[0], axis=-1)
        for k in range(num_exits):
            loss_sums[k] += float(np.sum(loss_fn(labels[k], logits[k])))
            correct[k] += float(np.sum(np.argmax(logits[k], axis=-1) == truth))
        count += len(truth)
    logs = {}
    for k in range(num_exits):
        logs[f"val_exit_{k + 1}_loss"] = loss_sums[k] / count
        logs[f"val_exit_{k + 1}_accuracy"] = correct[k] / count
    logs["val_loss"] = float(sum(w * logs[f"val_exit_{k + 1}_loss"] for k, w in enumerate(weights)))
    return logs


def _average_non_trainable(strategy, model) -> None:
    """Averages BatchNorm's moving statistics over the workers at the end of an epoch.

    Each replica updates them from its own share of the batch (like PyTorch DDP without
    SyncBatchNorm); averaging them makes every worker hold the same model, and the saved
    statistics reflect every worker's data, not only the chief's.
    """
    import tensorflow as tf

    variables = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]
    if not variables:
        return
    if not hasattr(model, "_tf_fusionnet_average_stats"):
        @tf.function
        def average():
            local = strategy.run(lambda: [tf.identity(v.value) for v in variables])
            means = [strategy.reduce(tf.distribute.ReduceOp.MEAN, t, axis=None) for t in local]
            for v, mean in zip(variables, means):
                v.assign(mean)

        model._tf_fusionnet_average_stats = average
    model._tf_fusionnet_average_stats()


def _check_same_position(strategy, epoch_var, step_var) -> None:
    """Every worker must resume from the same checkpoint, or their weights would part ways."""
    import tensorflow as tf

    position = tf.cast(epoch_var, tf.float64) * 1e9 + tf.cast(step_var, tf.float64)

    @tf.function
    def spread():  # ReduceOp has SUM and MEAN only: the mean, then how far anyone is from it
        mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, strategy.run(lambda: tf.identity(position)), axis=None)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.abs(position - mean)), axis=None)

    if float(spread().numpy()) != 0.0:
        raise RuntimeError("the workers restored different checkpoints (is --output on storage every worker "
                           "reads?); " + LOST_WORKER_HINT)


__all__ = ["LoopData", "WorkerLostError", "fit_multiworker", "replica_loss", "steps_per_epoch", "LOST_WORKER_HINT"]
