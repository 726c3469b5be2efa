"""The run folder: the one module that knows its layout, its lock and when it may be resumed.

A run folder (``--output``, ``TrainConfig.run_dir()``) holds:

* ``.tf_fusionnet_run``: the marker that makes it a run, and the trainer's lock (its PID);
* ``config.json``: every setting, the preset's architecture, library versions, git commit;
* ``split.json``: the held-out validation indices (reused by evaluation and export);
* ``preprocessing.json``: normalisation mean/std, image shape, class names;
* ``model.keras`` (last finished epoch), ``best.keras`` (best last-exit validation accuracy);
* ``log.csv``: one row per finished epoch; ``tensorboard/``; ``backup/`` (resume state);
* ``eval/``: evaluation's outputs and the logits cache (:mod:`tf_fusionnet.runs.reading`);
* ``.workerN/``: the copies other workers of a multi-worker run write.

Every file is written to a temporary name and renamed, so a run killed at any moment leaves
only whole files, and the same command resumes it.
"""

from __future__ import annotations

import os

import numpy as np

from tf_fusionnet.data.sources import ImageDataset
from tf_fusionnet.data.split import SPLIT_FILE, default_val_size, load_split, make_split, save_split
from tf_fusionnet.utils import pid_alive

# Settings added after runs were first written: a run without them was trained like this.
LEGACY_TRAIN_VALUES = {"weight_decay_style": "decoupled", "decay_norm_and_bias": False, "channels": 0,
                        "distill_alpha": 0.0, "distill_temperature": 3.0, "distill_teacher": "last"}
# Settings that may change between a run and its resumption without changing the run.
# Precision and XLA are among them: weights and optimizer state are float32 whatever the compute.
RESUMABLE_KEYS = {"verbose", "output", "num_cpu_devices", "tfds_data_dir", "inter_op_threads", "intra_op_threads",
                   "precision", "jit_compile", "checkpoint_steps"}


RUN_MARKER = ".tf_fusionnet_run"  # marks a folder as a run and holds the trainer's lock (its PID)


def read_run_json(path: str) -> dict:
    """A JSON object of a run folder (config.json, split.json, the backup's epoch marker), read
    through the project's one limited reader; ValueError (one line naming the file) otherwise."""
    from tf_fusionnet.utils import read_json_limited

    value = read_json_limited(path)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: must hold a JSON object, got {type(value).__name__}")
    if os.path.basename(path) == "config.json":
        for key, kind in (("train", dict), ("model_config", dict), ("exit_macs", list)):
            if key in value and not isinstance(value[key], kind):
                raise ValueError(f"{path}: {key} must be a JSON {'object' if kind is dict else 'list'}, "
                                 f"got {type(value[key]).__name__}")
    return value


def is_run_dir(run_dir: str, entries: list[str]) -> bool:
    if RUN_MARKER in entries:
        return True
    try:
        return isinstance(read_run_json(os.path.join(run_dir, "config.json")).get("train"), dict)
    except (OSError, ValueError):
        return False


def claim_run_dir(run_dir: str, record_pid: bool = False) -> int:
    """Makes ``run_dir`` (or checks it is a run of ours) and locks it; returns the lock's fd.

    A non-empty folder that is not a run is refused, so nothing of the user's is overwritten.
    The lock is an ``flock`` on the marker file: the kernel drops it when the process dies,
    so a lock left by a killed trainer is taken over, and a live one names its PID. The PID is
    written (``record_pid`` or :func:`record_owner`) only once the run is known to go ahead, so
    a trainer that is refused leaves the run's files as they were.
    """
    import fcntl

    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"--output {run_dir}: exists and is not a folder")
    if os.path.isdir(run_dir):
        entries = [e for e in os.listdir(run_dir) if not e.startswith(".worker")]
        if entries and not is_run_dir(run_dir, entries):
            raise ValueError(f"--output {run_dir}: a non-empty folder that is not a train.py run; "
                             "refusing to write into it (give a new or empty folder)")
    marker = os.path.join(run_dir, RUN_MARKER)
    try:
        os.makedirs(run_dir, exist_ok=True)
        fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ValueError(f"--output {run_dir}: cannot write there ({error.strerror or error})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 64).decode(errors="replace").strip()
        os.close(fd)
        if not (owner.isdigit() and pid_alive(int(owner))):
            owner = "not yet recorded: it is starting"
        raise ValueError(f"--output {run_dir}: another trainer (PID {owner}) is writing this run; "
                         "wait for it to finish or use another --output") from None
    if record_pid:
        record_owner(fd)
    return fd


def record_owner(lock_fd: int) -> None:
    """Writes this process's PID into a held run lock, for a second trainer's error message."""
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)



# What a started run writes before its first epoch ends; removed when such a run is restarted.
SETUP_FILES = ("config.json", "split.json", "preprocessing.json", "log.csv")


def has_finished_epoch(run_dir: str) -> bool:
    return any(os.path.exists(os.path.join(run_dir, name)) for name in ("model.keras", "backup"))


def check_resume(run_dir: str, current: dict) -> None:
    """Refuses to resume a run under other settings; a run that never finished an epoch restarts."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        return
    try:
        previous = {**LEGACY_TRAIN_VALUES, **read_run_json(path).get("train", {})}
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable ({error}); use another --output") from None
    changed = sorted(
        k for k in current if k not in RESUMABLE_KEYS and k in previous and previous[k] != current[k]
    )
    if not changed:
        return
    if not has_finished_epoch(run_dir):
        print(f"{run_dir}: no epoch of the earlier attempt had finished; starting it again with these settings",
              flush=True)
        for name in SETUP_FILES:
            if os.path.exists(os.path.join(run_dir, name)):
                os.remove(os.path.join(run_dir, name))
        return
    diffs = ", ".join(f"{k}: {previous[k]!r} -> {current[k]!r}" for k in changed)
    raise ValueError(f"{run_dir} holds a run with other settings ({diffs}); use another --output")


def previous_run_config(run_dir: str) -> dict | None:
    """The config.json of a run that has finished an epoch (a resumption), else None."""
    path = os.path.join(run_dir, "config.json")
    if not (has_finished_epoch(run_dir) and os.path.exists(path)):
        return None
    return read_run_json(path)


def check_same_architecture(run_dir: str, model) -> None:
    """Refuses to resume a run whose network the current code (or preset) builds differently."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        return
    previous = read_run_json(path).get("model_config")
    if previous is None:
        return
    previous = {**type(model)._LEGACY_DEFAULTS, **previous}
    current = model.get_config()
    changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ValueError(
            f"{run_dir} holds a run of another network ({diffs}); this version of the preset builds a "
            "different model, so it cannot be resumed: use another --output"
        )



def prepare_split(data: ImageDataset, run_dir: str, val_size: int, seed: int,
                  write: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Reuses the run's split.json if present (resume), else draws one (a function of the seed)
    and, with ``write``, saves it."""
    path = os.path.join(run_dir, SPLIT_FILE)
    if os.path.exists(path):
        return load_split(path, data)
    size = default_val_size(data) if val_size < 0 else val_size
    train_idx, val_idx = make_split(len(data.train_labels), size, seed)
    if write:
        save_split(path, data, val_idx, seed)
    return train_idx, val_idx



def last_logged_epoch(path: str) -> dict[str, float]:
    import csv

    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    numbers = {}
    for key, value in rows[-1].items():
        try:  # text columns (precision, cpu_model, cpu_flags) are not metrics
            numbers[key] = float(value)
        except (TypeError, ValueError):
            pass
    return numbers



def finished_epochs(run_dir: str) -> int:
    """How many epochs a resumption of the run keeps: the backup's epoch marker (written last at
    each epoch's end), else the log's last epoch (the multi-worker loop's runs); 0 for none."""
    try:
        return int(read_run_json(os.path.join(run_dir, "backup", "training_metadata.json"))["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not os.path.isdir(os.path.join(run_dir, "backup", "multiworker")):
        return 0  # fit's runs resume from the backup only: epochs logged after it are trained again
    try:
        return int(last_logged_epoch(os.path.join(run_dir, "log.csv")).get("epoch", 0))
    except (OSError, ValueError):
        return 0
