"""Where a bundle may be written: checks that run before any TensorFlow work (no TF import here).

An export never destroys what is not its own: ``--out`` may replace only a folder that holds a
bundle this project wrote and nothing else, and never the run, a folder inside it or above it.
Temporary folders are named with the exporting process's PID, so a later export can tell which
ones a killed export left behind.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Sequence

from tf_fusionnet.utils import pid_alive

BUNDLE_ENTRIES = {"manifest.json", "manifest.sha256", "report.json", "cascade_runner.py", "portable.py",
                  "tf_fusionnet_runtime", "float32", "float16", "int8", "__pycache__", "web"}
_TEMP_PREFIXES = (".tmp-bundle-", ".old-bundle-")
THRESHOLD_SOURCES = ("val", "train", "none")
PRECISIONS = ("float32", "float16", "int8")


def _is_our_bundle(path: str) -> bool:
    """A folder this project wrote: a manifest with its keys, and nothing else beside its own files."""
    try:
        with open(os.path.join(path, "manifest.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    if not (isinstance(manifest, dict) and {"format_version", "stages", "precisions", "sha256"} <= set(manifest)
            and isinstance(manifest["sha256"], dict)):
        return False
    if not all(e in BUNDLE_ENTRIES or (e.startswith("latency_") and e.endswith(".json")) for e in os.listdir(path)):
        return False
    return not foreign_files(path, manifest)


def foreign_files(path: str, manifest: dict) -> list[str]:
    """Every file or link under a bundle folder, at any depth, that the export did not write: not
    in the manifest's digests, not its own top-level files, not the runner's timing caches or
    bytecode. A folder holding one is no bundle of ours to replace (a user's notes in ``float32/``)."""
    listed = {os.path.normpath(name) for name in manifest.get("sha256", {})}
    own = {"manifest.json", "manifest.sha256", "report.json"}
    foreign = []
    for dirpath, dirnames, filenames in os.walk(path):
        rel_dir = os.path.relpath(dirpath, path)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            top = rel_dir == "."
            if os.path.islink(os.path.join(dirpath, name)):
                foreign.append(rel)
            elif rel in listed or (top and (name in own or (name.startswith("latency_") and name.endswith(".json")))):
                continue
            elif os.path.dirname(rel) in ("__pycache__", os.path.join("tf_fusionnet_runtime", "__pycache__")) \
                    and name.endswith(".pyc"):
                continue
            else:
                foreign.append(rel)
    return foreign


def check_out_dir(out_dir: str, run_dir: str) -> None:
    """Refuses an --out that would destroy something that is not a bundle of ours."""
    out, run = os.path.realpath(out_dir), os.path.realpath(run_dir)
    if out == run or out.startswith(run + os.sep) or run.startswith(out.rstrip(os.sep) + os.sep) or out == os.sep:
        raise ValueError(f"--out {out_dir}: is the run, inside it or above it; choose a folder outside {run_dir}")
    if os.path.lexists(out_dir):
        if not os.path.isdir(out_dir) or os.path.islink(out_dir):
            raise ValueError(f"--out {out_dir}: exists and is not a folder; refusing to replace it")
        if os.listdir(out_dir) and not _is_our_bundle(out_dir):
            raise ValueError(f"--out {out_dir}: exists and is not a bundle written by export/to_tflite.py "
                             "(or holds other files); refusing to replace it")


def clean_stale_temporaries(parent: str) -> list[str]:
    """Removes temporary bundle folders left by exports that were killed (their PID is gone)."""
    removed = []
    try:
        entries = os.listdir(parent)
    except OSError:
        return removed
    for entry in entries:
        prefix = next((p for p in _TEMP_PREFIXES if entry.startswith(p)), None)
        if prefix is None:
            continue
        pid = entry[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
            removed.append(entry)
    return removed


def check_export_arguments(precisions, calibration_images: int, report_images: int, thresholds_from: str) -> None:
    """Raises ValueError naming the first export argument out of range."""
    if not precisions:
        raise ValueError("--precision: give at least one of " + ", ".join(PRECISIONS))
    for p in precisions:
        if p not in PRECISIONS:
            raise ValueError(f"--precision must be among {', '.join(PRECISIONS)}, got {p!r}")
    twice = sorted({p for p in precisions if list(precisions).count(p) > 1})
    if twice:
        raise ValueError(f"--precision names {', '.join(twice)} more than once")
    if thresholds_from not in THRESHOLD_SOURCES:
        raise ValueError(f"--thresholds_from must be one of {', '.join(THRESHOLD_SOURCES)}, got {thresholds_from!r}")
    if "int8" in precisions and calibration_images < 1:
        raise ValueError(f"--calibration_images must be >= 1 for int8, got {calibration_images}")
    if report_images < 0:
        raise ValueError(f"--report_images must be >= 0 (0: all), got {report_images}")


def check_exits(exits: Sequence[int] | None, num_exits: int) -> list[int]:
    """0-based exit indices from 1-based exit numbers (None: every exit), strictly increasing."""
    if exits is None:
        return list(range(num_exits))
    numbers = [int(e) for e in exits]
    if not numbers or any(b <= a for a, b in zip(numbers, numbers[1:])) or numbers[0] < 1 or numbers[-1] > num_exits:
        raise ValueError(f"--exits must be increasing exit numbers between 1 and {num_exits}, got "
                         f"{','.join(map(str, numbers)) or 'none'}")
    return [e - 1 for e in numbers]
