"""Carrying unfinished runs between machines through the checkout, and committing what the driver wrote.

A run's last finished epoch (weights, log, settings) is copied into the checkout
(:func:`save_carry`), committed, and put back into a run folder that holds fewer epochs
(:func:`restore_carry`). The weights go in compact form (:mod:`tf_fusionnet.runs.compact`:
bfloat16, the optimizer's step counter but not its momentum): about a quarter of the full backup,
since every carry stays in the repository's history for good. Carries made before (full
``latest.weights.h5``) are still restored.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import time

from common import ROOT

# What resumes a run: train.py's backup (weights and optimizer state, the epoch), its log and
# settings, and the best epoch's record. best.keras itself stays behind (it would double the
# size): a resumed run writes it again when it beats the record, and until then
# ``evaluate.py --checkpoint best`` says it is missing instead of serving a later epoch.
# model.keras goes only with a run whose last epoch is done (evaluation reads it).
CARRIED = ("config.json", "split.json", "preprocessing.json", "log.csv", "best.keras.json",
           os.path.join("backup", "training_metadata.json"))
FULL_WEIGHTS = os.path.join("backup", "latest.weights.h5")  # train.py's resume state
COMPACT_WEIGHTS = os.path.join("backup", "latest.compact.h5")  # its carried form


def epochs_carried(run: str) -> int:
    """Epochs a run folder's backup marks as done (0 without one)."""
    try:
        with open(os.path.join(run, "backup", "training_metadata.json")) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def log_rows(run: str) -> list[dict]:
    path = os.path.join(run, "log.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save_carry(run: str, dest: str, epochs: int, timeout_s: float = 1800.0, poll_s: float = 10.0) -> int:
    """Copies ``run``'s last finished epoch to ``dest`` (replaced whole); returns its epochs.

    Safe while train.py trains the run: an epoch's end writes the log row, then the models,
    then the backup, so a copy is kept only if the log and the backup named the same epoch
    before and after it; otherwise it waits for the epoch's end to complete and tries again.
    ``epochs``: the run's length (its model.keras goes too once that many are done).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        before = (epochs_carried(run), len(log_rows(run)))
        if before[0] and before[0] == before[1]:
            tmp = dest + ".partial"
            shutil.rmtree(tmp, ignore_errors=True)
            names = CARRIED + (("model.keras",) if before[0] >= epochs else ())
            for name in names:
                if os.path.exists(os.path.join(run, name)):
                    os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
                    shutil.copy2(os.path.join(run, name), os.path.join(tmp, name))
            if os.path.exists(os.path.join(run, FULL_WEIGHTS)):
                from tf_fusionnet.runs.compact import compact_weights

                compact_weights(os.path.join(run, FULL_WEIGHTS), os.path.join(tmp, COMPACT_WEIGHTS))
            if (epochs_carried(run), len(log_rows(run))) == before:
                shutil.rmtree(dest, ignore_errors=True)
                os.replace(tmp, dest)
                return before[0]
            shutil.rmtree(tmp)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{run}: its log ({before[1]} epochs) and backup ({before[0]}) did not agree "
                               f"for {timeout_s:.0f} s; nothing carried")
        time.sleep(poll_s)


def _read(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read()


def restore_carry(carried: str, run: str) -> int:
    """Puts a carried state into ``run`` when it holds more finished epochs; returns the epochs restored (0: none).

    Only the carried files are replaced; call it while no train.py works on ``run``.
    """
    have, ahead = epochs_carried(run), epochs_carried(carried)
    if ahead <= have:
        return 0
    # The run's own models are of an earlier epoch than the carried state: never served as its.
    best_record = os.path.join(run, "best.keras.json")
    old_best = _read(best_record)
    for root, _, files in os.walk(carried):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), carried)
            target = os.path.join(run, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if rel == COMPACT_WEIGHTS:
                from tf_fusionnet.runs.compact import expand_weights

                expand_weights(os.path.join(root, name), os.path.join(run, FULL_WEIGHTS))
            else:
                shutil.copy2(os.path.join(root, name), target)
    stale = ["model.keras"] if not os.path.exists(os.path.join(carried, "model.keras")) else []
    if old_best is None or _read(best_record) != old_best:
        stale.append("best.keras")
    for name in stale:
        if os.path.exists(os.path.join(run, name)):
            os.remove(os.path.join(run, name))
    return ahead


def carry_now(jobs: list, work: str, carry: str, finished: dict) -> list[str]:
    """Carries every unfinished run of ``jobs`` that has a finished epoch; returns what it did."""
    done = []
    for job in jobs:
        run = os.path.join(work, job.name)
        if job.name in finished or not epochs_carried(run):
            continue
        if epochs_carried(run) <= epochs_carried(os.path.join(carry, job.name)):
            done.append(f"{job.name}: {epochs_carried(run)} epochs, carried already")
            continue
        done.append(f"{job.name}: {save_carry(run, os.path.join(carry, job.name), job.epochs)} epochs carried")
    return done


def git(args: list[str], cwd: str = ROOT, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, **kwargs)


def commit_paths(paths: list[str], message: str, repo: str = ROOT) -> None:
    """Commits ``paths`` (additions and deletions) and nothing else; a path with no file on disk,
    in the index or in HEAD (an empty folder, say: the carry once its last run has finished) is
    skipped, since git refuses the whole commit over it. Retries while another invocation holds
    git's index lock."""
    def known_to_git(path: str) -> bool:
        return bool(git(["ls-files", "--", path], repo).stdout.strip()
                    or git(["ls-tree", "-r", "--name-only", "HEAD", "--", path], repo).stdout.strip())

    paths = [p for p in paths if os.path.exists(p) or known_to_git(p)]  # deleted since HEAD: stage it
    for attempt in range(10):
        added = git(["add", "-A", "--", *paths], repo)
        known = [p for p in paths if known_to_git(p)]
        if added.returncode == 0 and not known:
            print(f"nothing to commit in {', '.join(paths) or 'no path'}: {message}", flush=True)
            return
        done = git(["commit", "-q", "-m", message, "--", *known], repo) if added.returncode == 0 else added
        if done.returncode == 0 or "index.lock" not in done.stderr:
            break
        time.sleep(5)
    print(f"committed {', '.join(os.path.relpath(p, repo) for p in known)}: {message}" if done.returncode == 0
          else f"nothing committed ({(done.stdout + done.stderr).strip()})", flush=True)


def seconds_until(hh_mm: str, now: float | None = None) -> float:
    """Seconds from ``now`` (default: the time) to the next HH:MM, local time."""
    import datetime

    try:
        hour, minute = (int(x) for x in hh_mm.split(":"))
        at = datetime.time(hour, minute)
    except ValueError:
        raise SystemExit(f"error: --carry_at {hh_mm!r}: give a time as HH:MM") from None
    current = datetime.datetime.fromtimestamp(time.time() if now is None else now)
    target = datetime.datetime.combine(current.date(), at)
    if target <= current:
        target += datetime.timedelta(days=1)
    return (target - current).total_seconds()
