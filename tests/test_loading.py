"""Loading anywhere (issue 34): every architecture's saved file after a bare ``import tf_fusionnet``,
compiled or not, in a fresh Python; the pixel-reading model; preset folders."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import tf_fusionnet
from tf_fusionnet.models.preset_files import PresetError
from tf_fusionnet.presets import build_model
from tf_fusionnet.training.config import TrainConfig
from tf_fusionnet.training.trainer import compile_for_training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trained_file(preset, path):
    """A model.keras as the trainer saves it: compiled with TorchSGD, one step taken."""
    keras.utils.set_random_seed(0)
    model = build_model(preset)
    compile_for_training(model, TrainConfig(preset=preset), steps_per_epoch=1, jit_compile=False)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical([0, 1, 2, 3], 10)
    model.fit(x, [y] * model.num_exits, epochs=1, verbose=0)
    model.save(path)
    return model, x


@pytest.mark.parametrize("preset", ["fusionnet-tiny", "msdnet-tiny", "ranet-tiny"])
def test_keras_load_model_after_a_bare_import_loads_every_architecture_compiled_or_not(tmp_path, preset):
    model, x = _trained_file(preset, str(tmp_path / "model.keras"))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", np.stack([np.asarray(v) for v in model(x, training=False)]))
    code = (
        "import sys, numpy as np\n"
        "import tf_fusionnet\n"
        "assert 'tensorflow' not in sys.modules\n"  # the import alone stays light
        "import keras\n"
        f"d = {str(tmp_path)!r}\n"
        "for compile in (True, False):\n"
        "    m = keras.saving.load_model(d + '/model.keras', compile=compile)\n"
        "    got = np.stack([np.asarray(v) for v in m(np.load(d + '/x.npy'), training=False)])\n"
        "    assert np.allclose(got, np.load(d + '/want.npy'), atol=1e-5), compile\n"
        "    print(type(m).__name__, type(m.optimizer).__name__ if compile else '-')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [type(model).__name__, "TorchSGD", type(model).__name__, "-"]


def test_the_loaded_run_reads_pixels_and_its_preset_round_trips(tiny_run, tmp_path):
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(tiny_run, run)  # evaluated here, so its test top-1 goes into the preset
    tf_fusionnet.evaluate_run(run, verbose=0)
    tiny_run = run
    model = tf_fusionnet.load_model(tiny_run)
    assert isinstance(model, tf_fusionnet.PixelClassifier)
    with open(os.path.join(tiny_run, "preprocessing.json")) as f:
        pre = json.load(f)
    assert model.class_names == pre["class_names"]
    pixels = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    normalised = (pixels.astype(np.float32) - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    bare = keras.saving.load_model(os.path.join(tiny_run, "model.keras"), compile=False)
    for a, b in zip(model.predict(pixels, verbose=0), bare.predict(normalised, verbose=0)):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert tf_fusionnet.load_model(tiny_run, pixels=False).__class__ is bare.__class__

    preset = str(tmp_path / "preset")
    model.save_to_preset(preset)
    assert sorted(os.listdir(preset)) == ["config.json", "metadata.json", "model.weights.h5"]
    with open(os.path.join(preset, "metadata.json")) as f:
        meta = json.load(f)
    assert meta["input"] == "pixels" and meta["normalization"]["mean"] == pre["mean"]
    assert len(meta["exit_macs"]) == len(meta["test_top1_per_exit"]) == model.num_exits
    assert meta["train"]["preset"] == "fusionnet-tiny"
    again = tf_fusionnet.FusionNet.from_preset(preset)
    for a, b in zip(model.predict(pixels, verbose=0), again.predict(pixels, verbose=0)):
        np.testing.assert_array_equal(a, b)
    assert again.preset_metadata["test_top1_per_exit"] == meta["test_top1_per_exit"]
    with pytest.raises(PresetError, match="not a MSDNet"):
        tf_fusionnet.MSDNet.from_preset(preset)
    # Nothing of the user's is overwritten: a folder with other files is refused.
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(PresetError, match="not a preset"):
        model.save_to_preset(str(user))
    assert (user / "notes.txt").read_text() == "mine"


def test_a_preset_name_builds_the_architecture_and_a_bare_network_round_trips(tmp_path):
    network = tf_fusionnet.RANet.from_preset("ranet-tiny", num_classes=5)
    assert isinstance(network, tf_fusionnet.RANet) and network.outputs[0].shape[-1] == 5
    network.save_to_preset(str(tmp_path / "bare"))
    again = tf_fusionnet.load_model(str(tmp_path / "bare"))
    x = np.zeros((1, 32, 32, 3), np.float32)
    for a, b in zip(network(x), again(x)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(PresetError, match="neither a preset folder nor a preset name"):
        tf_fusionnet.FusionNet.from_preset("no-such-preset")
