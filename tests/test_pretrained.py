"""Issue 45: trained presets loaded by name, their model card, and their bundle by name."""

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "fusionnet_tiny_sample"


def _ship_module():
    spec = importlib.util.spec_from_file_location("ship_preset", os.path.join(ROOT, "benchmarks", "ship_preset.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, tiny_run):
    """The tiny run, evaluated and shipped as a trained preset into a presets folder of its own."""
    from tf_fusionnet.evaluation.report import evaluate_run

    root = tmp_path_factory.mktemp("shipped")
    run = str(root / "run")
    shutil.copytree(tiny_run, run)
    evaluate_run(run, verbose=0)
    into = str(root / "pretrained")
    entry = _ship_module().ship(run, NAME, into, "tiny FusionNet, 1 epoch on the embedded sample")
    return {"into": into, "entry": entry, "run": run}


@pytest.fixture
def presets_env(shipped, monkeypatch):
    monkeypatch.setenv("TF_FUSIONNET_PRESETS", shipped["into"])
    return shipped


def test_a_shipped_preset_loads_by_name_and_classifies_the_sample(presets_env):
    import numpy as np

    import tf_fusionnet
    from tf_fusionnet.data.sources import load_dataset

    model = tf_fusionnet.load_model(NAME)
    assert isinstance(model, tf_fusionnet.PixelClassifier)
    again = tf_fusionnet.FusionNet.from_preset(NAME)
    test = load_dataset("sample")
    images = test.test_images[:8]
    assert model.predict_classes(images) == again.predict_classes(images)
    assert all(c in test.class_names for c in model.predict_classes(images))
    assert all(w.dtype == "float32" for w in model.weights)
    reference = tf_fusionnet.load_model(presets_env["run"])
    np.testing.assert_allclose(model.predict(images, verbose=0)[-1], reference.predict(images, verbose=0)[-1],
                               atol=1e-5)
    with pytest.raises(tf_fusionnet.PresetError, match="not a MSDNet"):
        tf_fusionnet.MSDNet.from_preset(NAME)
    with pytest.raises(tf_fusionnet.PresetError, match="takes no overrides"):
        tf_fusionnet.FusionNet.from_preset(NAME, num_classes=3)


def test_the_card_is_in_metadata_and_beside_the_folder_and_the_index_names_its_files(presets_env):
    into, entry = presets_env["into"], presets_env["entry"]
    with open(os.path.join(into, NAME, "metadata.json")) as f:
        card = json.load(f)["model_card"]
    assert card["data"]["source"] == "sample" and card["recipe"]["epochs"] == 1
    assert len(card["test"]["exits"]) == 3 and all(0 <= e["top1"] <= 1 and e["ece"] >= 0 for e in card["test"]["exits"])
    assert set(card["test"]["budgeted_top1"]) == {"20M", "40M", "60M"} and "32x32" in card["limitations"]
    assert card["training"]["hours"] >= 0 and card["training"]["cpus"]
    with open(os.path.join(into, f"{NAME}.md")) as f:
        text = f.read()
    assert text.startswith(f"# {NAME}") and "What it is not" in text
    for name, digest in entry["files"].items():
        with open(os.path.join(into, NAME, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest
    assert entry["first_exit"]["macs"] < entry["last_exit"]["macs"]
    from tf_fusionnet.summary import trained_table

    assert NAME in trained_table() and "%" in trained_table()


def test_a_promised_preset_that_is_missing_says_where_to_get_it(presets_env, tmp_path, monkeypatch):
    import tf_fusionnet

    other = tmp_path / "other"
    other.mkdir()
    (other / "index.json").write_text(json.dumps({"format": "tf_fusionnet.pretrained", "format_version": 1,
                                                  "presets": {"msdnet_cifar100": {"class": "MSDNet"}}}))
    monkeypatch.setenv("TF_FUSIONNET_PRESETS", str(other))
    with pytest.raises(tf_fusionnet.LoadError, match=r"^msdnet_cifar100: trained preset not installed here.*"
                                                     r"TF_FUSIONNET_PRESETS"):
        tf_fusionnet.load_model("msdnet_cifar100")
    (other / "index.json").write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(Exception, match="nested deeper"):
        tf_fusionnet.load_model("msdnet_cifar100")


def test_every_preset_the_package_promises_has_its_files():
    """tf_fusionnet/pretrained/index.json: a name that promises weights has them, byte for byte."""
    from tf_fusionnet.presets import PRETRAINED_DIR

    with open(os.path.join(PRETRAINED_DIR, "index.json")) as f:
        index = json.load(f)
    assert index["format"] == "tf_fusionnet.pretrained"
    for name, entry in index["presets"].items():
        folder = os.path.join(PRETRAINED_DIR, name)
        assert set(entry["files"]) == {"config.json", "metadata.json", "model.weights.h5"}, name
        assert os.path.getsize(os.path.join(folder, "model.weights.h5")) <= 25 * 2**20, name
        assert os.path.isfile(os.path.join(PRETRAINED_DIR, f"{name}.md")), name
        for file, digest in entry["files"].items():
            with open(os.path.join(folder, file), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest, f"{name}/{file}"


def test_export_by_name_and_run_its_int8_bundle(presets_env, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell has it
    env["TF_FUSIONNET_PRESETS"] = presets_env["into"]
    bundle = str(tmp_path / "bundle")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "export", "to_tflite.py"), "--preset", NAME,
                             "--out", bundle, "--precision", "int8", "--dataset", "sample", "--report_images", "50",
                             "--calibration_images", "50"], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"exporting {NAME} -> {bundle}" in result.stdout and "tf_fusionnet_preset_run_" not in result.stdout
    env_logs = ("cuInit", "oneDNN custom operations", "cuda drivers")  # TensorFlow's C++ start-up log
    assert not any(line in result.stderr for line in env_logs), result.stderr[-1500:]
    cat = os.path.join(ROOT, "tf_fusionnet", "data", "cifar10_sample", "test", "cat")
    ran = subprocess.run([sys.executable, os.path.join(bundle, "cascade_runner.py"), cat, "--precision", "int8"],
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0 and "images: mean" in ran.stdout, ran.stderr
