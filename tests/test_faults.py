"""Fault injection across the four entry points: a careless user and a hostile file.

Every case asserts the exit code, that the user gets exactly one line (``error: ...``), and that
every file that existed before is byte-identical afterwards. docs/reliability.md lists each case
and why its behaviour is the right one.
"""

import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tf_fusionnet", "data", "cifar10_sample")
CAT = os.path.join(SAMPLE, "test", "cat")


# --------------------------------------------------------------------------- helpers


def snapshot(*roots) -> dict[str, str]:
    """sha256 of every file under ``roots`` (symlinks and FIFOs by their kind only)."""
    digests = {}
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as f:
                        digests[path] = hashlib.sha256(f.read()).hexdigest()
                else:
                    digests[path] = "special"
    return digests


def assert_unchanged(before: dict[str, str], *roots) -> None:
    after = snapshot(*roots)
    changed = [p for p, digest in before.items() if after.get(p) != digest]
    assert not changed, f"pre-existing files changed or removed: {changed}"


def assert_one_line_error(returncode: int, stderr: str, expected_rc: int, pattern: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == expected_rc, (returncode, stderr)
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("error: ") and re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in stderr


def script(name: str, *args: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the scripts must be quiet on their own
    return subprocess.run([sys.executable, os.path.join(ROOT, name), *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def runner_module(bundle_dir: str):
    spec = importlib.util.spec_from_file_location("bundle_cascade_runner", os.path.join(bundle_dir, "cascade_runner.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- train.py

TRAIN_BAD_FLAGS = [
    (["--epochs", "0"], 2, r"--epochs must be an integer >= 1"),
    (["--epochs", "-3"], 2, r"--epochs"),
    (["--lr", "nan"], 2, r"--lr must be > 0"),
    (["--lr", "-0.5"], 2, r"--lr"),
    (["--label_smoothing", "-1"], 2, r"--label_smoothing must be in \[0, 1\)"),
    (["--mix_prob", "5"], 2, r"--mix_prob must be in \[0, 1\]"),
    (["--batch_size", "0"], 2, r"--batch_size must be an integer >= 1"),
    (["--momentum", "1"], 2, r"--momentum"),
    (["--weight_decay", "-1e-4"], 2, r"--weight_decay"),
    (["--weight_decay_style", "adamw"], 2, r"--weight_decay_style"),
    (["--val_size", "-5"], 2, r"--val_size"),
    (["--channels", "7"], 2, r"--channels"),
    (["--cutmix_alpha", "0"], 2, r"--cutmix_alpha"),
    (["--exit_weights", "1,x"], 1, r"--exit_weights must be comma-separated numbers"),
    (["--exit_weights", "0,0,0"], 1, r"--exit_weights must be finite, >= 0 and not all 0"),
    (["--image_size", "4,4"], 1, r"--image_size must be between 16,16 and 2048,2048"),
    (["--image_size", "100000,100000"], 1, r"--image_size must be between"),
    (["--image_size", "abc"], 1, r"--image_size must be H,W"),
    (["--preset", "resnet-9000"], 1, r"Unknown preset 'resnet-9000'"),
    (["--dataset", "/no/such/data"], 1, r"no such file or folder"),
    (["extra_positional"], 2, r"unexpected arguments"),
]


@pytest.mark.parametrize("args,rc,pattern", TRAIN_BAD_FLAGS, ids=[" ".join(a) for a, _, _ in TRAIN_BAD_FLAGS])
def test_train_refuses_bad_flags(work, args, rc, pattern):
    before = snapshot(work["root"])
    out = os.path.join(work["root"], "new_run")
    result = script("train.py", "--output", out, "--preset", "fusionnet-tiny", *args, cwd=work["root"])
    assert_one_line_error(result.returncode, result.stderr, rc, pattern)
    assert_unchanged(before, work["root"])
    assert not os.path.exists(out)  # nothing half-written


def assert_training_refuses_dataset(work, dataset: str, pattern: str) -> None:
    before = snapshot(work["root"])
    out = os.path.join(work["root"], "new_run")
    result = script("train.py", "--output", out, "--dataset", dataset, "--preset", "fusionnet-tiny", cwd=work["root"])
    assert_one_line_error(result.returncode, result.stderr, 1, pattern)
    assert_unchanged(before, work["root"])


def test_train_refuses_a_fifo_as_dataset(work):
    fifo = os.path.join(work["root"], "data.tar.gz")
    os.mkfifo(fifo)
    assert_training_refuses_dataset(work, fifo, r"not a folder or a regular file")


def test_train_on_a_file_that_is_no_dataset_says_so_in_one_line(work):
    notes = os.path.join(work["user"], "thesis.txt")
    assert_training_refuses_dataset(work, notes, r"not a folder or a readable tar archive")


def test_resize_that_cannot_fit_in_memory_is_refused():
    from tf_fusionnet.data.sources import DataError, _check_memory

    with pytest.raises(DataError, match="more than half of this machine's"):
        _check_memory(1_000_000, (2048, 2048), 3, "a million photos")  # 12.6 TB of uint8
    _check_memory(800, (32, 32), 3, "the sample")  # 2.5 MB: fine


def test_train_refuses_a_users_non_empty_folder(work):
    before = snapshot(work["root"])
    result = script("train.py", "--output", work["user"], cwd=work["root"])
    assert_one_line_error(result.returncode, result.stderr, 1, r"non-empty folder that is not a train.py run")
    assert_unchanged(before, work["root"])
    assert os.listdir(work["user"]) == ["thesis.txt"]


def test_train_refuses_a_file_as_output(work):
    path = os.path.join(work["user"], "thesis.txt")
    before = snapshot(work["root"])
    result = script("train.py", "--output", path, cwd=work["root"])
    assert_one_line_error(result.returncode, result.stderr, 1, r"exists and is not a folder")
    assert_unchanged(before, work["root"])


def test_train_refuses_an_unwritable_output(work):
    path = os.path.join(work["user"], "thesis.txt", "run")  # below a file: cannot be created
    before = snapshot(work["root"])
    result = script("train.py", "--output", path, cwd=work["root"])
    assert_one_line_error(result.returncode, result.stderr, 1, r"cannot write there")
    assert_unchanged(before, work["root"])


def test_second_trainer_is_told_the_first_ones_pid(work):
    from tf_fusionnet.runs.folder import claim_run_dir

    fd = claim_run_dir(work["run"], record_pid=True)  # this process plays the first trainer
    try:
        before = snapshot(work["root"])
        result = script("train.py", "--output", work["run"], "--preset", "fusionnet-tiny", cwd=work["root"])
        assert_one_line_error(result.returncode, result.stderr, 1, rf"another trainer \(PID {os.getpid()}\)")
        assert_unchanged(before, work["root"])
    finally:
        os.close(fd)
    # The lock of a process that died is free again (the kernel drops flock locks).
    os.close(claim_run_dir(work["run"]))


def test_train_on_a_truncated_archive(work):
    archive = os.path.join(work["root"], "data.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(SAMPLE, arcname="sample")
    with open(archive, "rb") as f:
        data = f.read()
    with open(archive, "wb") as f:
        f.write(data[: len(data) // 2])
    assert_training_refuses_dataset(work, archive, r"truncated or corrupt archive")


def test_train_refuses_to_resume_under_other_settings(work):
    before = snapshot(work["root"])
    result = script("train.py", "--output", work["run"], "--preset", "fusionnet-tiny", "--epochs", "2",
                    "--batch_size", "64", cwd=work["root"])
    assert_one_line_error(result.returncode, result.stderr, 1, r"holds a run with other settings \(epochs: 1 -> 2\)")
    assert_unchanged(before, work["root"])


def test_train_refuses_to_resume_a_run_of_another_network(work):
    config_path = os.path.join(work["run"], "config.json")
    config = json.load(open(config_path))
    config["model_config"]["growth_rate"] = 5  # as if the preset had changed since the run started
    with open(config_path, "w") as f:
        json.dump(config, f)
    before = snapshot(work["root"])
    result = script("train.py", "--output", work["run"], "--preset", "fusionnet-tiny", "--epochs", "1",
                    "--batch_size", "64", "--verbose", "0", cwd=work["root"])
    assert_one_line_error(result.returncode, result.stderr, 1, r"holds a run of another network \(growth_rate: 5 -> 4\)")
    assert_unchanged(before, work["root"])


# --------------------------------------------------------------------------- evaluate.py


def test_evaluate_bad_batch_size(work):
    before = snapshot(work["root"])
    result = script("evaluate.py", "--run", work["run"], "--batch_size", "0", cwd=work["root"])
    assert_one_line_error(result.returncode, result.stderr, 2, r"--batch_size must be an integer >= 1")
    assert_unchanged(before, work["root"])


@pytest.mark.parametrize("budget", ["-5", "nan", "0"])
def test_evaluate_bad_budget(work, budget):
    before = snapshot(work["root"])
    result = script("evaluate.py", "--run", work["run"], "--budget", budget, cwd=work["root"])
    assert_one_line_error(result.returncode, result.stderr, 2, r"--budget must be a positive number")
    assert_unchanged(before, work["root"])


def test_evaluate_missing_run_and_user_folder(work):
    before = snapshot(work["root"])
    result = script("evaluate.py", "--run", os.path.join(work["root"], "nope"), cwd=work["root"])
    assert_one_line_error(result.returncode, result.stderr, 1, r"no such run directory")
    result = script("evaluate.py", "--run", work["user"], cwd=work["root"])
    assert_one_line_error(result.returncode, result.stderr, 1, r"config.json: missing")
    assert_unchanged(before, work["root"])


def test_evaluate_corrupt_checkpoint_is_named_as_corrupt(work):
    with open(os.path.join(work["run"], "model.keras"), "wb") as f:
        f.write(b"not a zip archive at all")
    before = snapshot(work["root"])
    result = script("evaluate.py", "--run", work["run"], cwd=work["root"])
    assert_one_line_error(result.returncode, result.stderr, 1, r"model.keras: corrupt or not a Keras model file")
    assert "File not found" not in result.stderr
    assert_unchanged(before, work["root"])


def test_corrupt_logits_cache_is_rebuilt_and_named(work, capsys):
    from tf_fusionnet.runs.reading import load_run, run_logits

    run = load_run(work["run"])
    first = run_logits(run, verbose=0)
    cache = os.path.join(run.eval_dir, "logits_model.npz")
    with open(cache, "r+b") as f:
        f.truncate(100)
    again = run_logits(run, verbose=0)
    assert "unreadable evaluation cache" in capsys.readouterr().out
    np.testing.assert_allclose(again["test_logits"], first["test_logits"], atol=1e-5)
    assert np.load(cache)["test_logits"].shape == first["test_logits"].shape


def test_logits_cache_is_keyed_on_the_data(work, tmp_path):
    from tf_fusionnet.runs.reading import load_run, logits_cache_key

    run = load_run(work["run"])
    key = logits_cache_key(run, run.checkpoint_path())
    other = shutil.copytree(SAMPLE, str(tmp_path / "other"))
    assert logits_cache_key(run, run.checkpoint_path(), other) == key  # the same bytes
    first_test = sorted(os.listdir(os.path.join(other, "test", "cat")))[0]
    img = Image.open(os.path.join(other, "test", "cat", first_test))
    Image.fromarray(255 - np.asarray(img)).save(os.path.join(other, "test", "cat", first_test))
    assert logits_cache_key(run, run.checkpoint_path(), other) != key  # one test image changed


# --------------------------------------------------------------------------- export/to_tflite.py


def _export(work, *args):
    return script("export/to_tflite.py", "--run", work["run"], *args, cwd=work["root"])


@pytest.mark.parametrize("where", ["run", "inside", "above", "user", "file"])
def test_export_never_replaces_what_is_not_its_bundle(work, where):
    out = {"run": work["run"], "inside": os.path.join(work["run"], "eval"), "above": work["root"],
           "user": work["user"], "file": os.path.join(work["user"], "thesis.txt")}[where]
    before = snapshot(work["root"])
    result = _export(work, "--out", out)
    pattern = r"not a folder|not a bundle written by export|is the run, inside it or above it"
    assert_one_line_error(result.returncode, result.stderr, 1, pattern)
    assert_unchanged(before, work["root"])


def test_export_refuses_a_bundle_holding_a_users_file(work):
    with open(os.path.join(work["bundle"], "my_notes.txt"), "w") as f:
        f.write("do not lose")
    before = snapshot(work["root"])
    result = _export(work, "--out", work["bundle"])
    assert_one_line_error(result.returncode, result.stderr, 1, r"not a bundle written by export")
    assert_unchanged(before, work["root"])


@pytest.mark.parametrize("args,pattern", [
    (["--calibration_images", "0"], r"--calibration_images must be >= 1 for int8"),
    (["--report_images", "-1"], r"--report_images must be >= 0"),
    (["--precision", "float32,float32"], r"--precision names float32 more than once"),
    (["--precision", "fp64"], r"--precision must be among"),
    (["--exits", "3,1"], r"--exits must be increasing exit numbers between 1 and 3, got 3,1"),
    (["--exits", "1,4"], r"--exits must be increasing exit numbers between 1 and 3"),
    (["--exits", "two"], r"--exits must be comma-separated exit numbers, got two"),
])
def test_export_bad_numbers(work, args, pattern):
    before = snapshot(work["root"])
    result = _export(work, "--out", os.path.join(work["root"], "b2"), *args)
    assert_one_line_error(result.returncode, result.stderr, 1, pattern)
    assert_unchanged(before, work["root"])
    assert not os.path.exists(os.path.join(work["root"], "b2"))


def test_export_refuses_a_run_without_validation_data(work):
    split_path = os.path.join(work["run"], "split.json")
    split = json.load(open(split_path))
    split["val_indices"] = []
    with open(split_path, "w") as f:
        json.dump(split, f)
    before = snapshot(work["root"])
    result = _export(work, "--out", os.path.join(work["root"], "b2"), "--precision", "float32")
    assert_one_line_error(result.returncode, result.stderr, 1, r"no validation split .* --thresholds_from")
    assert_unchanged(before, work["root"])
    assert not [e for e in os.listdir(work["root"]) if e.startswith(".tmp-bundle-")]
    # Told where to fit them, it exports, and says so in the manifest.
    from tf_fusionnet.export.bundle import export_bundle

    out = os.path.join(work["root"], "b3")
    export_bundle(work["run"], out, precisions=("float32",), report_images=10, verbose=False, thresholds_from="train")
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["thresholds_fitted_on"].startswith("training-split") and manifest["thresholds"]
    export_bundle(work["run"], out, precisions=("float32",), report_images=10, verbose=False, thresholds_from="none")
    assert json.load(open(os.path.join(out, "manifest.json")))["thresholds"] == []


def test_stale_temporaries_of_killed_exports_are_removed(work):
    from tf_fusionnet.export.destination import clean_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = os.path.join(work["root"], f".tmp-bundle-{dead.pid}-abc")
    live = os.path.join(work["root"], f".tmp-bundle-{os.getpid()}-xyz")  # an export still running
    os.makedirs(stale)
    os.makedirs(live)
    assert clean_stale_temporaries(work["root"]) == [os.path.basename(stale)]
    assert not os.path.exists(stale) and os.path.exists(live)


# --------------------------------------------------------------------------- the cascade runner


def _run_runner(bundle, argv, capsys):
    try:
        module = runner_module(bundle)
    except ImportError:  # the entry script refused the bundle before any of its runtime ran: as a user runs it
        result = subprocess.run([sys.executable, os.path.join(bundle, "cascade_runner.py"), *argv, "--bundle", bundle],
                                capture_output=True, text=True, timeout=120)
        return result.returncode, result.stdout, result.stderr
    rc = module.main([*argv, "--bundle", bundle])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _edit_manifest(bundle, edit, update_digest=True, raw=None):
    path = os.path.join(bundle, "manifest.json")
    if raw is None:
        manifest = json.load(open(path))
        edit(manifest)
        raw = json.dumps(manifest, indent=2)
    with open(path, "w") as f:
        f.write(raw)
    if update_digest:  # a careful forger: the sidecar matches, so the schema check must catch it
        digest = hashlib.sha256(raw.encode()).hexdigest()
        with open(os.path.join(bundle, "manifest.sha256"), "w") as f:
            f.write(f"{digest}  manifest.json\n")


def _set(path_keys, value):
    def edit(manifest):
        node = manifest
        for key in path_keys[:-1]:
            node = node[key]
        node[path_keys[-1]] = value
    return edit


MANIFEST_FAULTS = [
    ("edited threshold, digest not updated", _set(["thresholds", 0, "thresholds", 0], 0.01), False,
     r"does not match manifest.sha256"),
    ("normalisation std missing", lambda m: m["normalization"].pop("std"), True, r"'normalization.std'"),
    ("std of zero", _set(["normalization", "std"], [0.0, 1.0, 1.0]), True, r"'normalization.std' must be positive"),
    ("wrong number of exit MACs", _set(["exit_macs"], [1, 2]), True, r"'exit_macs'"),
    ("model exits out of order", _set(["model_exits"], [3, 1, 2]), True, r"'model_exits'"),
    ("threshold above 1", _set(["thresholds", 0, "thresholds", 0], 5), True, r"'thresholds\[0\].thresholds'"),
    ("class names not strings", _set(["class_names"], [1, 2]), True, r"'class_names'"),
    ("input shape a string", _set(["input", "shape"], "32x32x3"), True, r"'input.shape'"),
    ("old format version", _set(["format_version"], 1), True, r"format version 1"),
    ("newer format version", _set(["format_version"], 5), True, r"format version 5.*newer tf_fusionnet"),
    ("unknown stage 1 input", _set(["input", "stage_1_reads"], "rgb"), True, r"'input.stage_1_reads'"),
    ("stage 1 input missing in format 4", lambda m: m["input"].pop("stage_1_reads"), True,
     r"'input.stage_1_reads'"),
    ("pixel stage said to read the normalised image", _set(["input", "stage_1_reads"], "normalized"), True,
     r"stage_1.tflite: stage 1 reads uint8 pixels, not what the manifest's input.stage_1_reads says"),
    ("unknown stage tensor type", _set(["precisions", "float32", "stage_io_dtype"], "int4"), True,
     r"'precisions.float32.stage_io_dtype'"),
    ("float stages said to be int8", _set(["precisions", "float32", "stage_io_dtype"], "int8"), True,
     r"stage_1.tflite: its inputs and outputs are not all int8"),
    ("stages list short", _set(["precisions", "float32", "stages"], ["float32/stage_1.tflite"]), True,
     r"'precisions.float32.stages'"),
]


@pytest.mark.parametrize("name,edit,update_digest,pattern", MANIFEST_FAULTS, ids=[f[0] for f in MANIFEST_FAULTS])
def test_runner_refuses_bad_manifests(work, capsys, name, edit, update_digest, pattern):
    _edit_manifest(work["bundle"], edit, update_digest)
    before = snapshot(work["root"])
    rc, out, err = _run_runner(work["bundle"], [CAT], capsys)
    assert_one_line_error(rc, err, 1, pattern)
    assert_unchanged(before, work["root"])


def test_runner_refuses_non_json_constants(work, capsys):
    raw = open(os.path.join(work["bundle"], "manifest.json")).read().replace('"budget_macs": ', '"budget_macs": -Infinity, "x": ', 1)
    _edit_manifest(work["bundle"], None, raw=raw)
    rc, _, err = _run_runner(work["bundle"], [CAT], capsys)
    assert_one_line_error(rc, err, 1, r"not strict JSON")


def test_runner_refuses_a_missing_manifest_digest(work, capsys):
    os.remove(os.path.join(work["bundle"], "manifest.sha256"))
    rc, _, err = _run_runner(work["bundle"], [CAT], capsys)
    assert_one_line_error(rc, err, 1, r"no readable manifest.sha256")


def test_runner_refuses_a_modified_stage(work, capsys):
    with open(os.path.join(work["bundle"], "float32", "stage_2.tflite"), "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    before = snapshot(work["root"])
    rc, _, err = _run_runner(work["bundle"], [CAT], capsys)
    assert_one_line_error(rc, err, 1, r"stage_2.tflite: sha256 does not match")
    assert_unchanged(before, work["root"])


RUNNER_BAD_ARGS = [
    (["--thresholds", "0.5,x,0"], r"--thresholds must be comma-separated numbers"),
    (["--thresholds", "0.5,0.5"], r"2 thresholds given for 3 exits"),
    (["--thresholds", "nan,0.5,0"], r"not NaN"),
    (["--deadline_ms", "-1"], r"--deadline_ms must be a non-negative number"),
    (["--budget", "-1"], r"--budget must be a positive number"),
    (["--budget", "nan"], r"--budget must be a positive number"),
    (["--budget", "1"], r"below the cheapest entry"),
    (["--latency_budget_ms", "0"], r"--latency_budget_ms must be a positive number"),
    (["--threads", "0"], r"--threads and --batch_size must be integers >= 1"),
    (["--batch_size", "0"], r"--threads and --batch_size must be integers >= 1"),
    (["--precision", "bfloat16"], r"precision 'bfloat16' not in the bundle"),
    (["--budget", "lots"], r"invalid float value"),
    (["--budget", "30e6", "--latency_budget_ms", "2"], r"--budget and --latency_budget_ms each choose the thresholds"),
    (["--budget", "30e6", "--thresholds", "0.5,0.5,0"], r"--budget and --thresholds each choose the thresholds"),
]


@pytest.mark.parametrize("args,pattern", RUNNER_BAD_ARGS, ids=[" ".join(a) for a, _ in RUNNER_BAD_ARGS])
def test_runner_refuses_bad_arguments(work, capsys, args, pattern):
    before = snapshot(work["root"])
    rc, _, err = _run_runner(work["bundle"], [CAT, *args], capsys)
    assert_one_line_error(rc, err, 1, pattern)
    assert_unchanged(before, work["root"])


def test_runner_refuses_a_fifo_instead_of_hanging(work, capsys):
    fifo = os.path.join(work["root"], "camera.png")
    os.mkfifo(fifo)
    rc, _, err = _run_runner(work["bundle"], [fifo], capsys)
    assert_one_line_error(rc, err, 1, r"not a regular file")


@pytest.mark.parametrize("kind", ["text", "wrong size", "missing", "empty folder"])
def test_runner_bad_images(work, capsys, kind):
    path = os.path.join(work["root"], "input")
    if kind == "text":
        path += ".png"
        with open(path, "w") as f:
            f.write("this is not an image")
        pattern = r"not a readable image"
    elif kind == "wrong size":
        path += ".png"
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
        # A bundle resizes unless its manifest says it must not (input.resize "none").
        manifest_path = os.path.join(work["bundle"], "manifest.json")
        with open(manifest_path) as f:
            manifest = json.load(f)
        manifest["input"]["resize"] = "none"
        with open(manifest_path, "w") as f:
            json.dump(manifest, f)
        import hashlib

        digest_path = os.path.join(work["bundle"], "manifest.sha256")
        with open(digest_path) as f:
            old = f.read()
        with open(manifest_path, "rb") as f:
            new = hashlib.sha256(f.read()).hexdigest()
        with open(digest_path, "w") as f:
            f.write(old.replace(old.split()[0], new))
        pattern = r"image is 64x64x3 \(HxWxC\), the model takes 32x32x3 and this model does not resize"
    elif kind == "missing":
        pattern = r"no such file or folder"
    else:
        os.makedirs(path)
        pattern = r"no images found"
    before = snapshot(work["root"])
    rc, _, err = _run_runner(work["bundle"], [path], capsys)
    assert_one_line_error(rc, err, 1, pattern)
    assert_unchanged(before, work["root"])


def test_runner_converts_modes_training_accepted(work, capsys):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    files = {
        "rgba.png": Image.fromarray(pixels).convert("RGBA"),
        "cmyk.jpg": Image.fromarray(pixels).convert("CMYK"),
        "grey16.png": Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16)),
        "palette.png": Image.fromarray(pixels).convert("P"),
    }
    folder = os.path.join(work["root"], "photos")
    os.makedirs(folder)
    for name, img in files.items():
        img.save(os.path.join(folder, name))
    rc, out, err = _run_runner(work["bundle"], [folder], capsys)
    assert rc == 0, err
    assert out.strip().splitlines()[-1].endswith("4 converted to 3 channel(s)")


# --------------------------------------------------------------------------- data: one image-mode rule


def test_folder_with_a_grey_first_image_trains_as_rgb(tmp_path):
    from tf_fusionnet.data.sources import load_dataset

    root = shutil.copytree(SAMPLE, str(tmp_path / "data"))
    first = sorted(os.listdir(os.path.join(root, "train", "airplane")))[0]
    path = os.path.join(root, "train", "airplane", first)
    Image.open(path).convert("L").save(path)  # sorts first in the whole dataset
    data = load_dataset(root)
    assert data.image_shape == (32, 32, 3)
    assert data.notes and "converted 1 of" in data.notes[0] and "the majority" in data.notes[0]
    forced = load_dataset(root, channels=1)
    assert forced.image_shape == (32, 32, 1)


# --------------------------------------------------------------------------- issue 36: silent losses


@pytest.mark.parametrize("where", [os.path.join("float32", "notes.txt"), os.path.join("int8", "deep", "notes.txt")])
def test_export_refuses_a_bundle_holding_a_users_file_in_a_sub_folder(work, where):
    path = os.path.join(work["bundle"], where)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("do not lose")
    before = snapshot(work["root"])
    result = _export(work, "--out", work["bundle"])
    assert_one_line_error(result.returncode, result.stderr, 1, r"not a bundle written by export")
    assert_unchanged(before, work["root"])


def test_evaluate_refuses_to_write_plots_over_a_users_files(work):
    out = os.path.join(work["user"], "compare")
    os.makedirs(out)
    with open(os.path.join(out, "anytime.png"), "wb") as f:
        f.write(b"my own figure")
    before = snapshot(work["user"])
    result = script("evaluate.py", "--run", work["run"], "--run", work["run"], "--out", out, cwd=work["root"])
    assert_one_line_error(result.returncode, result.stderr, 1, r"files this tool did not write")
    assert_unchanged(before, work["user"])


def test_training_stops_at_a_non_finite_loss_and_writes_no_checkpoint(work):
    out = os.path.join(work["root"], "diverged")
    result = script("train.py", "--output", out, "--preset", "fusionnet-tiny", "--batch_size", "64", "--lr", "1e6",
                    "--warmup_epochs", "0", "--epochs", "2", cwd=work["root"])
    assert_one_line_error(result.returncode, result.stderr, 1, r"loss became (nan|inf) at epoch 1, step \d+")
    assert not os.path.exists(os.path.join(out, "model.keras"))
    assert not os.path.exists(os.path.join(out, "backup", "latest.weights.h5"))


def test_evaluate_and_export_refuse_a_model_with_non_finite_outputs(work):
    import keras

    import tf_fusionnet  # noqa: F401  (registers the classes)

    path = os.path.join(work["run"], "model.keras")
    model = keras.saving.load_model(path, compile=False)
    kernel = [v for v in model.weights if "kernel" in v.path][-1]  # an exit's classifier (ReLU would map NaN to 0)
    kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))
    model.save(path)
    shutil.rmtree(os.path.join(work["run"], "eval"), ignore_errors=True)
    before = snapshot(work["root"])
    result = script("evaluate.py", "--run", work["run"], cwd=work["root"])
    assert_one_line_error(result.returncode, result.stderr, 1, r"outputs are not finite")
    result = _export(work, "--out", os.path.join(work["root"], "b-nan"), "--precision", "float32")
    assert_one_line_error(result.returncode, result.stderr, 1, r"outputs are not finite")
    assert_unchanged(before, work["root"])
    assert not os.path.exists(os.path.join(work["root"], "b-nan"))
