"""Small helpers: atomic file writes and run metadata."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` only on success.

    A reader never sees a half-written file, and a crash leaves the old file in place.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    # Keep the full name as the suffix: Keras checks endings such as ".weights.h5".
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{base}", dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:  # a full disk: name the file the user knows, not the temporary one
        if error.filename in (None, tmp):
            raise OSError(error.errno, error.strerror or str(error), path) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def git_commit() -> str | None:
    """The repository's HEAD commit, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def library_versions() -> dict[str, str]:
    import importlib.metadata as md
    import platform

    versions = {"python": platform.python_version()}
    for package in ("tensorflow", "keras", "numpy", "tensorflow-datasets", "ai-edge-litert"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return versions


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve")


def machine_info() -> dict[str, Any]:
    """CPU model, core count and the SIMD flags that decide TensorFlow's and LiteRT's kernels.

    Benchmarks record it: throughput differs up to 2.5x between the project's machines, so a
    figure means something only next to the CPU it was measured on.
    """
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"cpu_model": model, "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "simd_flags": [f for f in SIMD_FLAGS if f in flags]}


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


JSON_MAX_BYTES = 16 * 2**20  # run configs, presets, manifests and indexes are kilobytes
JSON_MAX_DEPTH = 64  # the project's files nest a few levels; Python's parser recurses per level


def json_depth(text: str) -> int:
    """The deepest nesting of [ and { in JSON text, brackets inside strings not counted (a linear
    scan, so a hostile file is measured before the recursive parser sees it)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def read_json_limited(path: str, max_bytes: int = JSON_MAX_BYTES, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """A JSON file the project did not write itself, read with limits before parsing: at most
    ``max_bytes`` and ``max_depth`` levels; ValueError with one line naming the file otherwise
    (a file of nested brackets would make ``json.load`` raise RecursionError)."""
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(f"{path}: {size:,} bytes, more than the {max_bytes:,} a file of this kind may have")
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if json_depth(text) > max_depth:
        raise ValueError(f"{path}: JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
