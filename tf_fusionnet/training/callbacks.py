"""Crash-safe training callbacks.

Keras's ``ModelCheckpoint``, ``CSVLogger`` and ``BackupAndRestore`` write their
files in place, so a ``kill -9`` during a write leaves a truncated file, and
``CSVLogger`` repeats the rows of an epoch that is trained again after a
resume. These subclasses and small callbacks write to a temporary name and
rename, and key the log by epoch.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time

import keras

from tf_fusionnet.utils import atomic_path, atomic_write_json, atomic_write_text


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose weights and epoch marker are replaced atomically.

    Weights are renamed into place before the epoch marker, so a crash between
    the two renames at worst trains the last epoch once more.
    """

    def __init__(self, backup_dir: str):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)

    def _load_model(self):
        try:
            super()._load_model()
        except ValueError:
            # A backup saved under a layer name since renamed: resume from a renamed copy.
            import tempfile

            from tf_fusionnet.models.legacy_weights import renamed_copy

            with tempfile.TemporaryDirectory(prefix="tf_fusionnet_legacy_") as tmp:
                copy = renamed_copy(self._weights_path, tmp) if os.path.exists(self._weights_path) else None
                if copy is None:
                    raise
                original, self._weights_path = self._weights_path, copy
                try:
                    super()._load_model()
                finally:
                    self._weights_path = original

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        with atomic_path(self._weights_path) as tmp:
            self.model.save_weights(tmp, overwrite=True)
        atomic_write_json(
            self._training_metadata_path,
            {"epoch": self._current_epoch, "batch": self._last_batch_seen},
        )


class NonFiniteLossError(ValueError):
    """Training reached a NaN or infinite loss; the message says where and what was kept."""

    def __init__(self, epoch: int, step: int, value: float):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(
            f"training stopped: the loss became {value} at epoch {epoch}, step {step}; the run keeps its last "
            "finished epoch (model.keras and the backup were not written over). Lower --lr (or "
            "--warmup_epochs longer), then train into a new --output")


def check_finite_loss(value, epoch: int, step: int) -> None:
    """Raises :class:`NonFiniteLossError` for a NaN or infinite loss (``epoch`` and ``step`` 1-based)."""
    import math

    if value is not None and not math.isfinite(float(value)):
        raise NonFiniteLossError(epoch, step, float(value))


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops ``fit`` at the first step whose loss is not finite, before the epoch ends.

    Keras's ``TerminateOnNaN`` only asks ``fit`` to stop, so the epoch's end still runs and its
    callbacks save the NaN weights over the last good ``model.keras`` and backup. This raises
    instead, so those files keep the last finished epoch. Put it first in the callback list.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        check_finite_loss((logs or {}).get("loss"), getattr(self, "_epoch", 1), batch + 1)


class EpochCSVLog(keras.callbacks.Callback):
    """``log.csv``: one row per finished epoch (1-based ``epoch`` column), rewritten atomically.

    Rows of epochs that are trained again after a resume replace the old ones.
    ``epoch_seconds`` is the epoch's wall clock, its validation pass included, so a run's
    training time is the column's sum whatever the number of restarts. ``train_seconds``
    and ``val_seconds`` split it. ``train_images_per_second`` is the training pass's
    steady-state throughput: ``batch_size`` images per step over the steps after the
    epoch's first (which includes tracing the step function after a start or resume);
    not logged with ``batch_size`` 0 or a one-step epoch. ``precision`` (the model's dtype
    policy), ``cpu_model`` and ``cpu_flags`` (the SIMD flags that choose TensorFlow's kernels)
    say what each epoch ran on: a resumed run may continue on another machine.
    """

    def __init__(self, path: str, batch_size: int = 0):
        super().__init__()
        self.path = path
        self.batch_size = batch_size
        self._epoch_start: float | None = None
        self._val_start: float | None = None
        self._first_step_end: float | None = None
        self._steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._val_start = None
        self._first_step_end = None
        self._steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self._steps == 1:
            self._first_step_end = time.perf_counter()

    def on_test_begin(self, logs=None):
        if self._epoch_start is not None and self._val_start is None:
            self._val_start = time.perf_counter()

    def _where(self) -> dict[str, str]:
        from tf_fusionnet.utils import machine_info

        info = machine_info()
        policy = getattr(getattr(self.model, "dtype_policy", None), "name", None) or keras.config.dtype_policy().name
        return {"precision": policy, "cpu_model": info["cpu_model"], "cpu_flags": " ".join(info["simd_flags"])}

    def _read_rows(self) -> list[dict[str, str]]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": str(epoch + 1)}
        if self._epoch_start is not None:
            end = time.perf_counter()
            train_end = self._val_start or end
            row["epoch_seconds"] = f"{end - self._epoch_start:.1f}"
            row["train_seconds"] = f"{train_end - self._epoch_start:.1f}"
            row["val_seconds"] = f"{end - train_end:.1f}"
            if self.batch_size and self._steps > 1 and train_end > self._first_step_end:
                steady = (self._steps - 1) * self.batch_size / (train_end - self._first_step_end)
                row["train_images_per_second"] = f"{steady:.1f}"
        row.update(self._where())
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:  # the rate the epoch ended with
            row["lr"] = f"{float(keras.ops.convert_to_numpy(optimizer.learning_rate)):.6g}"
        for key, value in sorted((logs or {}).items()):
            row[key] = f"{float(value):.6g}"
        rows = [r for r in self._read_rows() if int(r["epoch"]) < epoch + 1] + [row]
        columns = ["epoch"] + sorted({k for r in rows for k in r} - {"epoch"})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Saves the last epoch's model to ``last_path`` and the best one to ``best_path``.

    "Best" is the highest ``monitor`` value (e.g. the last exit's validation
    accuracy); it is remembered in ``best_path + '.json'`` across restarts.
    """

    def __init__(self, last_path: str, best_path: str | None = None, monitor: str | None = None):
        super().__init__()
        self.last_path = last_path
        self.best_path = best_path
        self.monitor = monitor
        self._best_record = f"{best_path}.json" if best_path else None

    def _best_so_far(self) -> float:
        if self._best_record and os.path.exists(self._best_record):
            with open(self._best_record) as f:
                return float(json.load(f)["value"])
        return float("-inf")

    def on_epoch_end(self, epoch, logs=None):
        with atomic_path(self.last_path) as tmp:
            self.model.save(tmp)
        if not (self.best_path and self.monitor and logs and self.monitor in logs):
            return
        value = float(logs[self.monitor])
        if value > self._best_so_far():
            with atomic_path(self.best_path) as tmp:
                self.model.save(tmp)
            atomic_write_json(self._best_record, {"epoch": epoch + 1, "monitor": self.monitor, "value": value})
