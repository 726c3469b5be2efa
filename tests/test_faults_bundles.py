"""Fault injection, continued: bundles from strangers and the runner as a batch tool (issue 36).

The same contract as tests/test_faults.py (whose helpers and fixtures this file uses): exit
code, exactly one ``error:`` line per problem, no traceback, every pre-existing file unchanged.
docs/reliability.md has the threat model these cases check.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from test_faults import CAT, _edit_manifest, _run_runner, assert_one_line_error, assert_unchanged, runner_module, snapshot


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _outside_copy(work, name="stage_1.tflite"):
    """A copy of the bundle's first float32 stage outside the bundle, as a forger would plant it."""
    outside = os.path.join(work["root"], "outside")
    os.makedirs(outside, exist_ok=True)
    path = os.path.join(outside, name)
    shutil.copy(os.path.join(work["bundle"], "float32", "stage_1.tflite"), path)
    return path


def _point_stage_1_at(work, name: str, digest_of: str | None) -> None:
    """The manifest's first float32 stage renamed ``name``, its digest forged to match ``digest_of``."""
    def edit(manifest):
        old = manifest["precisions"]["float32"]["stages"][0]
        manifest["precisions"]["float32"]["stages"][0] = name
        manifest["sha256"][name] = _sha256(digest_of) if digest_of else manifest["sha256"][old]
    _edit_manifest(work["bundle"], edit)


# --------------------------------------------------------------------------- one rule confines every bundle path

@pytest.mark.parametrize("kind", ["dot-dot", "absolute", "dot-dot inside a name", "backslash", "empty part"])
def test_runner_refuses_stage_names_that_leave_the_bundle(work, capsys, kind):
    planted = _outside_copy(work)
    name = {"dot-dot": "../outside/stage_1.tflite", "absolute": planted,
            "dot-dot inside a name": "float32/../../outside/stage_1.tflite",
            "backslash": "..\\outside\\stage_1.tflite", "empty part": "float32//stage_1.tflite"}[kind]
    _point_stage_1_at(work, name, planted)
    before = snapshot(work["root"])
    rc, _, err = _run_runner(work["bundle"], [CAT], capsys)
    assert_one_line_error(rc, err, 1, r"must name files inside the bundle")
    assert "outside" not in err.replace(name, "") and _sha256(planted) not in err
    assert_unchanged(before, work["root"])


def test_runner_errors_do_not_tell_whether_an_outside_file_exists(work, capsys):
    planted = _outside_copy(work)
    pristine = os.path.join(work["root"], "pristine")
    shutil.copytree(work["bundle"], pristine)
    messages = []
    for name in ("../outside/stage_1.tflite", "../outside/no_such_file.tflite"):
        shutil.rmtree(work["bundle"])
        shutil.copytree(pristine, work["bundle"])
        _point_stage_1_at(work, name, planted)
        rc, _, err = _run_runner(work["bundle"], [CAT], capsys)
        assert rc == 1
        messages.append(err.replace(name, "NAME"))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("what", ["stage", "manifest", "stage folder"])
def test_runner_refuses_links_that_leave_the_bundle(work, capsys, what):
    planted = _outside_copy(work)
    if what == "stage":
        target = os.path.join(work["bundle"], "float32", "stage_1.tflite")
        os.remove(target)
        os.symlink(planted, target)
        pattern = r"stage_1.tflite: a link that leaves the bundle"
    elif what == "stage folder":
        outside = os.path.dirname(planted)
        for name in os.listdir(os.path.join(work["bundle"], "float32")):
            shutil.copy(os.path.join(work["bundle"], "float32", name), outside)
        shutil.rmtree(os.path.join(work["bundle"], "float32"))
        os.symlink(outside, os.path.join(work["bundle"], "float32"))
        pattern = r"a link that leaves the bundle"
    else:
        moved = os.path.join(os.path.dirname(planted), "manifest.json")
        shutil.move(os.path.join(work["bundle"], "manifest.json"), moved)
        os.symlink(moved, os.path.join(work["bundle"], "manifest.json"))
        pattern = r"manifest.json: not a regular file of the bundle"  # the entry script's check, before any runtime
    before = snapshot(work["root"])
    result = subprocess.run([sys.executable, os.path.join(work["bundle"], "cascade_runner.py"), CAT],
                            capture_output=True, text=True, timeout=120)
    assert_one_line_error(result.returncode, result.stderr, 1, pattern)
    assert_unchanged(before, work["root"])


def test_runner_refuses_a_digest_list_naming_outside_files(work, capsys):
    _edit_manifest(work["bundle"], lambda m: m["sha256"].update({"../../etc/passwd": "0" * 64}))
    rc, _, err = _run_runner(work["bundle"], [CAT], capsys)
    assert_one_line_error(rc, err, 1, r"'sha256' must name files inside the bundle")


# --------------------------------------------------------------------------- the runtime's own files and the pin

@pytest.mark.parametrize("name", ["portable.py", "runner.py", "__init__.py", "extra.py"])
def test_a_modified_runtime_file_never_runs(work, capsys, name):
    marker = os.path.join(work["root"], "runtime_ran")
    with open(os.path.join(work["bundle"], "tf_fusionnet_runtime", name), "a") as f:
        f.write(f"\nopen({marker!r}, 'w').write('ran')\n")
    result = subprocess.run([sys.executable, os.path.join(work["bundle"], "cascade_runner.py"), CAT],
                            capture_output=True, text=True, timeout=120)
    assert_one_line_error(result.returncode, result.stderr, 1,
                          rf"tf_fusionnet_runtime/{re_escape(name)}: sha256 does not match the manifest; none of "
                          r"the bundle's runtime was run")
    with pytest.raises(ImportError, match="sha256 does not match"):
        runner_module(work["bundle"])
    assert not os.path.exists(marker)


def test_a_pinned_bundle_checks_its_pin_before_its_runtime_runs(work):
    # A consistent forgery: the runtime changed and the manifest and its digest rewritten to match.
    marker = os.path.join(work["root"], "runtime_ran")
    pin = _sha256(os.path.join(work["bundle"], "manifest.json"))
    path = os.path.join(work["bundle"], "tf_fusionnet_runtime", "cli.py")
    with open(path, "a") as f:
        f.write(f"\nopen({marker!r}, 'w').write('ran')\n")
    _edit_manifest(work["bundle"], lambda m: m["sha256"].update({"tf_fusionnet_runtime/cli.py": _sha256(path)}))
    result = subprocess.run([sys.executable, os.path.join(work["bundle"], "cascade_runner.py"), CAT,
                             "--expect_manifest_sha256", pin], capture_output=True, text=True, timeout=120)
    assert_one_line_error(result.returncode, result.stderr, 1, rf"is not the expected {pin}")
    assert not os.path.exists(marker)


def test_a_pinned_manifest_refuses_a_forged_bundle(work, capsys):
    pin = _sha256(os.path.join(work["bundle"], "manifest.json"))
    rc, out, _ = _run_runner(work["bundle"], [CAT, "--expect_manifest_sha256", pin], capsys)
    assert rc == 0 and "images:" in out
    # A careful forger: new class names and a matching manifest.sha256. Unpinned, that runs.
    _edit_manifest(work["bundle"], lambda m: m.update(class_names=[f"c{i}" for i in range(len(m["class_names"]))]))
    rc, _, _ = _run_runner(work["bundle"], [CAT], capsys)
    assert rc == 0
    before = snapshot(work["root"])
    rc, _, err = _run_runner(work["bundle"], [CAT, "--expect_manifest_sha256", pin.upper()], capsys)
    assert_one_line_error(rc, err, 1, rf"is not the expected {pin}")
    assert_unchanged(before, work["root"])
    module = runner_module(work["bundle"])
    with pytest.raises(module.BundleError, match="not the expected"):
        module.CascadeRunner(work["bundle"], expect_manifest_sha256=pin)


@pytest.mark.parametrize("pin", ["abc", "g" * 64])
def test_runner_refuses_a_malformed_pin(work, capsys, pin):
    rc, _, err = _run_runner(work["bundle"], [CAT, "--expect_manifest_sha256", pin], capsys)
    assert_one_line_error(rc, err, 1, r"must be 64 hex digits")


# --------------------------------------------------------------------------- one check of every stage against its file

def _set_stage_shape(manifest, k, name, shape):
    spec = manifest["stages"][k]
    spec["input_shapes"][spec["inputs"].index(name)] = shape


STAGE_FAULTS = [
    ("fewer classes named than the stages answer", lambda m: m.update(class_names=m["class_names"][:3]),
     r"stage_1.tflite: answers 10 classes, the manifest names 3"),
    ("a larger input shape than the stages read", lambda m: m["input"].update(shape=[64, 64, 3]),
     r"stage_1.tflite: reads 32x32x3 images, the manifest's input.shape says 64x64x3"),
    ("a stage input shape the file does not have", lambda m: _set_stage_shape(m, 1, m["stages"][1]["inputs"][0], [7, 7, 7]),
     r"stage_2.tflite: input \S+ is \d+x\d+x\d+, the manifest's stages\[1\] says 7x7x7"),
    ("a stage output the file does not have", lambda m: m["stages"][0]["outputs"].append("extra"),
     r"stage_1.tflite: outputs .*the manifest's stages\[0\] lists"),
    ("stage records of the wrong length", lambda m: m.update(stages=m["stages"][:1]), r"'stages' must be a list of 3"),
    ("stage input shapes not sizes", lambda m: m["stages"][0].update(input_shapes=[["32", 32, 3]]),
     r"'stages\[0\].input_shapes'"),
]


@pytest.mark.parametrize("name,edit,pattern", STAGE_FAULTS, ids=[f[0] for f in STAGE_FAULTS])
def test_runner_checks_every_stage_against_its_file(work, capsys, name, edit, pattern):
    _edit_manifest(work["bundle"], edit)
    before = snapshot(work["root"])
    rc, _, err = _run_runner(work["bundle"], [CAT], capsys)
    assert_one_line_error(rc, err, 1, pattern)
    assert_unchanged(before, work["root"])


def test_stage_files_swapped_between_bundles_of_other_shapes_are_refused(work, capsys):
    # Stage 2's file in stage 1's place (digests forged): its inputs are stage 1's outputs.
    def edit(manifest):
        stages = manifest["precisions"]["float32"]["stages"]
        stages[0], stages[1] = stages[1], stages[0]
    _edit_manifest(work["bundle"], edit)
    rc, _, err = _run_runner(work["bundle"], [CAT], capsys)
    assert_one_line_error(rc, err, 1, r"stage_2.tflite: inputs .*the manifest's stages\[0\] lists image")


# --------------------------------------------------------------------------- budgets without a table

@pytest.mark.parametrize("args", [["--latency_budget_ms", "5"], ["--budget", "1e9"]])
def test_budgets_on_a_bundle_without_thresholds_say_so_in_one_line(work, capsys, args):
    _edit_manifest(work["bundle"], lambda m: m.update(thresholds=[]))
    rc, _, err = _run_runner(work["bundle"], [CAT, *args], capsys)
    assert_one_line_error(rc, err, 1, r"no fitted thresholds|has none \(exported with --thresholds_from none\)")


# --------------------------------------------------------------------------- the runner as a batch tool

def _folder_with_one_bad_image(work):
    folder = os.path.join(work["root"], "photos", "cat")
    os.makedirs(folder)
    for name in sorted(os.listdir(CAT))[:6]:
        shutil.copy(os.path.join(CAT, name), folder)
    bad = os.path.join(folder, sorted(os.listdir(folder))[2][:-4] + "b.png")
    with open(bad, "w") as f:
        f.write("not an image")
    return os.path.dirname(folder), bad


@pytest.mark.parametrize("batch_size", ["1", "4"])
def test_one_unreadable_image_is_named_and_the_rest_answered(work, capsys, batch_size):
    folder, bad = _folder_with_one_bad_image(work)
    before = snapshot(work["root"])
    rc, out, err = _run_runner(work["bundle"], [folder, "--batch_size", batch_size], capsys)
    assert_one_line_error(rc, err, 1, re_escape(bad) + r": not a readable image")
    lines = out.strip().splitlines()
    assert len(lines) == 7 and lines[-1].startswith("6 images:") and "1 unreadable" in lines[-1]
    assert "top-1" in lines[-1] and "on the 6 in class-named folders" in lines[-1]
    assert_unchanged(before, work["root"])


def re_escape(text: str) -> str:
    import re
    return re.escape(text)


def test_json_output_ends_with_a_summary_and_top1_from_class_folders(work, capsys):
    folder, bad = _folder_with_one_bad_image(work)
    os.remove(bad)
    rc, out, err = _run_runner(work["bundle"], [folder, "--json"], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert all("file" in r for r in rows[:-1]) and len(rows) == 7
    summary = rows[-1]["summary"]
    assert summary["images"] == 6 and summary["labelled"] == 6 and sum(summary["exit_counts"]) == 6
    cat = json.load(open(os.path.join(work["bundle"], "manifest.json")))["class_names"].index("cat")
    assert summary["top1"] == pytest.approx(np.mean([r["class"] == cat for r in rows[:-1]]))


def test_help_states_the_default_budget_and_precision(work, capsys):
    module = runner_module(work["bundle"])
    with pytest.raises(SystemExit):
        module.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "answered by the last exit" in text and "float32 (default)" in text


# --------------------------------------------------------------------------- deadlines: stale costs are re-measured

def test_a_deadline_re_measures_stage_costs_that_a_loaded_moment_left_too_high(work):
    module = runner_module(work["bundle"])
    runner = module.CascadeRunner(work["bundle"])
    image = np.asarray(Image.open(os.path.join(CAT, sorted(os.listdir(CAT))[0])))
    runner._stage_cost = [0.001, 1e4, 1e4]  # stages 2 and 3 measured at a (very) loaded moment
    exits = [runner.classify(image, deadline_ms=2000)[0]["exit"] for _ in range(4 * runner.PROBE_AFTER_SKIPS)]
    assert exits[0] == 1  # the stale estimate rules stage 2 out at first
    assert exits[-runner.PROBE_AFTER_SKIPS:] == [3] * runner.PROBE_AFTER_SKIPS  # then re-measured, and fitted
    assert max(runner._stage_cost[1:]) < 2000


def test_a_deadline_too_short_for_a_stage_is_probed_ever_less_often(work):
    module = runner_module(work["bundle"])
    runner = module.CascadeRunner(work["bundle"])
    image = np.zeros(runner.input_shape, np.uint8)
    runner._stage_cost = [0.001, 1e4, 1e4]
    results = [runner.classify(image, deadline_ms=0.0)[0] for _ in range(40 * runner.PROBE_AFTER_SKIPS)]
    late = sum(r["exit"] > 1 for r in results)
    assert 1 <= late <= 6  # probes at 16, 48, 112, 240, 496 images: doubling waits


def test_server_mode_pads_a_short_stream_to_its_images_not_to_batch_size(work):
    """--batch_size 1000000 on three images: the last calls are padded to the three images seen,
    not to a million (which allocated gigabytes of zeros before answering)."""
    import tracemalloc

    from tf_fusionnet.runtime import CascadeRunner

    runner = CascadeRunner(work["bundle"], "float32")
    images = np.zeros((3, 32, 32, 3), np.uint8)
    tracemalloc.start()
    answered = sorted(i for i, _ in runner.classify_stream([images], batch_size=1_000_000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert answered == [0, 1, 2] and peak < 50_000_000


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "{\"sha256\": " + "[" * 100_000 + "]" * 100_000 + "}"], ids=["top_level", "in_sha256"])
def test_a_deeply_nested_manifest_with_a_matching_digest_is_one_line(work, text):
    """Brackets nested 100,000 deep under a digest that matches them: json's RecursionError
    became a traceback in the entry script's own check, before the runtime."""
    raw = text.encode()
    with open(os.path.join(work["bundle"], "manifest.json"), "wb") as f:
        f.write(raw)
    with open(os.path.join(work["bundle"], "manifest.sha256"), "w") as f:
        f.write(f"{hashlib.sha256(raw).hexdigest()}  manifest.json\n")
    result = subprocess.run([sys.executable, os.path.join(work["bundle"], "cascade_runner.py"), CAT],
                            capture_output=True, text=True, timeout=120)
    assert_one_line_error(result.returncode, result.stderr, 1, r"manifest.json: no readable sha256 table")
    from tf_fusionnet.runtime import BundleError, load_manifest

    with pytest.raises(BundleError, match="nested too deeply"):
        load_manifest(work["bundle"])


def test_class_names_and_data_paths_that_are_not_utf8_are_shown_not_crashed_on(work, tmp_path):
    """A class folder named in Latin-1 (b"caf\\xe9") trains; its name, kept as Python keeps such
    bytes, then broke the data's fingerprint (evaluate, export) and the runner's output line."""
    from tf_fusionnet.data.sources import source_fingerprint

    folder = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"data", b"caf\xe9"))
    os.makedirs(folder)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(os.path.join(folder, "a.png"))
    assert len(source_fingerprint(str(tmp_path / "data"))) == 64
    names = [f"caf\udce9 {i}" for i in range(10)]
    _edit_manifest(work["bundle"], lambda m: m.update(class_names=names))
    result = subprocess.run([sys.executable, os.path.join(work["bundle"], "cascade_runner.py"), CAT,
                             "--thresholds", "0,0,0"], capture_output=True, timeout=120,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    shown = result.stdout.decode("utf-8")
    assert shown.count("caf\\xe9 ") >= 10  # every line names its class, escaped
