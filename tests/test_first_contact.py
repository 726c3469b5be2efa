"""Issue 46: what a newcomer meets first: photos of any size, --help, a quiet import, clear errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _photo(path, width=640, height=480):
    """A 640x480 JPEG, as a phone gives: a red square in the centre of a grey frame."""
    from PIL import Image

    pixels = np.full((height, width, 3), 128, np.uint8)
    pixels[height // 2 - 100: height // 2 + 100, width // 2 - 100: width // 2 + 100] = (220, 30, 30)
    Image.fromarray(pixels).save(path, quality=90)
    return pixels


def test_fit_to_input_crops_the_centre_to_the_aspect_ratio_then_resizes():
    from tf_fusionnet.runtime import fit_to_input

    image = np.zeros((480, 640, 3), np.uint8)
    image[:, :80] = 255  # a white band at the left edge: outside the centred 480x480 crop
    fitted, changed = fit_to_input(image, 32, 32)
    assert changed and fitted.shape == (32, 32, 3) and fitted.dtype == np.uint8 and fitted.max() == 0
    same, changed = fit_to_input(fitted, 32, 32)
    assert not changed and same is fitted
    grey, _ = fit_to_input(np.full((100, 50, 1), 7, np.uint8), 32, 32)
    assert grey.shape == (32, 32, 1) and (grey == 7).all()
    with pytest.raises(ValueError, match="does not resize"):
        fit_to_input(image, 32, 32, "none")


def test_the_runner_classifies_a_640x480_jpeg_and_says_once_that_it_resized(tiny_bundle, tmp_path):
    photos = [str(tmp_path / f"photo{i}.jpg") for i in range(2)]
    for p in photos:
        _photo(p)
    result = subprocess.run([sys.executable, os.path.join(tiny_bundle, "cascade_runner.py"), *photos],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(tuple(photos))]
    assert len(lines) == 2 and all(" exit " in line for line in lines)
    assert result.stderr.count("fitted to the model's 32x32 input") == 1
    assert "2 fitted to the input size" in result.stdout


def test_the_runner_matches_a_pre_resized_copy(tiny_bundle, tmp_path):
    """Resizing in the runner is the same as resizing with fit_to_input first."""
    import json

    from PIL import Image

    from tf_fusionnet.runtime import fit_to_input

    big = str(tmp_path / "big.png")
    pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(big)
    small = str(tmp_path / "small.png")
    Image.fromarray(fit_to_input(pixels, 32, 32)[0]).save(small)
    out = subprocess.run([sys.executable, os.path.join(tiny_bundle, "cascade_runner.py"), big, small, "--json"],
                         capture_output=True, text=True, timeout=300).stdout.splitlines()
    a, b = (json.loads(line) for line in out[:2])
    assert (a["class"], a["exit"]) == (b["class"], b["exit"]) and a["confidence"] == pytest.approx(b["confidence"])


def test_pixel_classifier_takes_any_size_and_one_unbatched_image(tiny_run):
    import tf_fusionnet

    model = tf_fusionnet.load_model(tiny_run)
    photo = np.random.default_rng(1).integers(0, 256, (480, 640, 3)).astype(np.uint8)
    one = model.predict_classes(photo)
    assert len(one) == 1 and one[0] in model.class_names
    mixed = model.predict_classes([photo, photo[:100, :300], np.zeros((32, 32, 3), np.uint8)])
    assert len(mixed) == 3 and mixed[0] == one[0]
    with pytest.raises(ValueError, match="channel"):
        model.predict_classes(np.zeros((32, 32, 4), np.uint8))
    assert model.preset_metadata.get("resize", "center_crop_bilinear") == "center_crop_bilinear"


@pytest.mark.parametrize("tool,flag", [("train.py", "--batch_size"), ("evaluate.py", "--run"),
                                       ("export/to_tflite.py", "--precision")])
def test_every_tool_s_help_lists_its_own_flags_with_defaults(tool, flag):
    result = subprocess.run([sys.executable, os.path.join(ROOT, tool), "--help"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0
    assert flag in result.stdout and "(default:" in result.stdout and "Try --helpfull" not in result.stdout
    assert "--alsologtostderr" not in result.stdout  # absl's own stay behind --helpfull


def test_the_package_imports_and_builds_a_model_without_a_word_on_stderr(tmp_path):
    code = ("import tf_fusionnet\n"
            "assert not [n for n in dir(tf_fusionnet) if n in ('Any', 'annotations', 'importlib', 'sys')]\n"
            "tf_fusionnet.FusionNet.from_preset('fusionnet-tiny')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_FUSIONNET_VERBOSE")}
    env["PYTHONPATH"] = ROOT
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=str(tmp_path), env=env)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_load_model_of_an_architecture_name_points_to_from_preset():
    import tf_fusionnet

    with pytest.raises(tf_fusionnet.LoadError, match=r"FusionNet\.from_preset\('fusionnet-cifar'\)"):
        tf_fusionnet.load_model("fusionnet-cifar")
