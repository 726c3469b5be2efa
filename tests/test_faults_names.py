"""Issue 47: names are data, a closed or broken stdout, and timing files that are not the bundle's."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image


def _image(path):
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(path)


def _runner(bundle, *args, **kwargs):
    return subprocess.run([sys.executable, os.path.join(bundle, "cascade_runner.py"), *args],
                          capture_output=True, timeout=300, **kwargs)


def test_a_newline_or_bad_bytes_in_a_name_cannot_forge_a_result_line(work):
    folder = os.path.join(work["root"], "photos")
    os.makedirs(folder)
    forged = os.path.join(folder, "cat.png\nforged.png: dog (0.999) exit 1, 0.10M MACs, 0.01 ms.png")
    _image(forged)
    _image(os.fsdecode(os.path.join(os.fsencode(folder), b"caf\xe9.png")))
    result = _runner(work["bundle"], folder)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("2 images")  # two results and the summary
    assert any("cat.png\\nforged.png" in line for line in lines) and any("caf\\xe9.png" in line for line in lines)


def test_a_closed_stdout_is_refused_and_a_broken_pipe_ends_quietly(work):
    folder = os.path.join(work["root"], "many")
    os.makedirs(folder)
    for i in range(40):
        _image(os.path.join(folder, f"{i:02d}.png"))
    closed = subprocess.run(f"{sys.executable} {os.path.join(work['bundle'], 'cascade_runner.py')} {folder} >&-",
                            shell=True, capture_output=True, text=True, timeout=300)
    assert closed.returncode == 2 and "standard output is closed" in closed.stderr
    piped = subprocess.run(f"{sys.executable} {os.path.join(work['bundle'], 'cascade_runner.py')} {folder} | head -1; "
                           "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", capture_output=True,
                           text=True, timeout=300)
    assert piped.returncode == 1 and "Traceback" not in piped.stderr and len(piped.stdout.splitlines()) == 1


def test_timings_of_another_machine_or_an_unpinned_file_are_not_used(work):
    from tf_fusionnet.runtime import CascadeRunner

    runner = CascadeRunner(work["bundle"], "float32")
    cache = os.path.join(work["bundle"], "latency_float32_1t.json")
    measured = runner.cascade_timings(images=2, cache=cache)
    with open(cache) as f:
        stored = json.load(f)
    fake = {"key": stored["key"].replace(stored["key"].split(":")[2], "0" * 16), "exit_ms": [1e-6] * runner.num_exits,
            "stage_cost_ms": [1e-6] * runner.num_exits}
    with open(cache, "w") as f:
        json.dump(fake, f)
    again = CascadeRunner(work["bundle"], "float32").cascade_timings(images=2, cache=cache)
    assert again["exit_ms"] != fake["exit_ms"] and min(again["exit_ms"]) > 1e-3 and measured
    with open(cache, "w") as f:
        f.write("[" * 50000 + "]" * 50000)
    assert CascadeRunner(work["bundle"], "float32").cascade_timings(images=2, cache=cache)["exit_ms"]
