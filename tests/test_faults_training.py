"""Fault injection, continued: training and its data (issue 36).

The contract of tests/test_faults.py (whose helpers this file uses): exit code, exactly one
``error:`` line, no traceback, every pre-existing file unchanged.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from test_faults import ROOT, SAMPLE, assert_one_line_error, assert_unchanged, script, snapshot

TINY = ["--preset", "fusionnet-tiny", "--batch_size", "64", "--warmup_epochs", "0"]


def _sample_copy(tmp_path) -> str:
    return shutil.copytree(SAMPLE, str(tmp_path / "data"))


# --------------------------------------------------------------------------- data


def test_a_decompression_bomb_in_a_training_folder_is_one_line(tmp_path):
    data = _sample_copy(tmp_path)
    bomb = os.path.join(data, "train", "cat", "0000_bomb.png")
    Image.new("1", (20000, 20000)).save(bomb)  # 400 M pixels in a few kB: over Pillow's limit
    before = snapshot(str(tmp_path))
    out = str(tmp_path / "run")
    result = script("train.py", "--dataset", data, "--output", out, *TINY, cwd=str(tmp_path))
    assert_one_line_error(result.returncode, result.stderr, 1, r"0000_bomb.png.*(decompression bomb|exceeds limit)")
    assert_unchanged(before, str(tmp_path))
    assert not os.path.exists(out)


def test_a_float_tiff_on_the_0_to_1_scale_trains_as_its_pixels(tmp_path):
    from tf_fusionnet.data.sources import load_dataset

    data = _sample_copy(tmp_path)
    as_png = load_dataset(data, channels=1).train_images
    folder = os.path.join(data, "train", "airplane")
    for name in sorted(os.listdir(folder))[:3]:  # the same images, as 0..1 float TIFFs
        pixels = np.asarray(Image.open(os.path.join(folder, name)).convert("L"))
        os.remove(os.path.join(folder, name))
        Image.fromarray(pixels.astype(np.float32) / 255.0, "F").save(os.path.join(folder, name[:-4] + ".tif"))
    as_tiff = load_dataset(data, channels=1).train_images
    assert np.abs(as_tiff.astype(int) - as_png.astype(int)).max() <= 1  # not 0s and 1s


@pytest.mark.parametrize("values,accepted", [((0.0, 1.0), True), ((0.0, 200.0), True), ((-1.0, 1.0), False),
                                             ((0.0, 300.0), False), ((0.0, float("nan")), False)])
def test_float_images_are_read_on_their_scale_or_refused(values, accepted):
    from tf_fusionnet.portable import ImageModeError, image_to_array

    img = Image.fromarray(np.array([values * 8] * 16, np.float32), "F")
    if not accepted:
        with pytest.raises(ImageModeError, match="float image"):
            image_to_array(img, 1)
        return
    array, converted = image_to_array(img, 1)
    assert converted and array.max() == (255 if values[1] == 1.0 else 200)


# --------------------------------------------------------------------------- interrupted and failed runs


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def test_ctrl_c_says_where_training_stopped_and_the_same_command_resumes(tmp_path):
    out = str(tmp_path / "run")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--output", out, *TINY, "--epochs", "3", "--verbose", "2"]
    # A suite started in the background (``pytest &``) ignores SIGINT, and so would the child.
    trainer = subprocess.Popen(cmd, cwd=str(tmp_path), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    marker = os.path.join(out, "backup", "training_metadata.json")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and trainer.poll() is None and not os.path.exists(marker):
        time.sleep(0.05)
    assert trainer.poll() is None, "the run ended before it could be interrupted"
    trainer.send_signal(signal.SIGINT)
    _, err = trainer.communicate(timeout=120)
    assert_one_line_error(trainer.returncode, err, 130, r"interrupted: stopped at epoch [123] of 3; the same command "
                                                        r"resumes")
    stopped = int(err.split("stopped at epoch ")[1].split()[0])
    assert stopped == json.load(open(marker))["epoch"]
    if stopped == 3:
        pytest.skip("the run finished its last epoch before the signal arrived")
    resumed = subprocess.run(cmd, cwd=str(tmp_path), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from epoch {stopped} of 3" in resumed.stdout


def test_a_full_disk_while_writing_best_keras_is_one_line_and_keeps_the_last_epoch(tmp_path):
    out = str(tmp_path / "run")
    code = (
        "import errno, sys\n"
        "from tf_fusionnet.console import import_tensorflow\n"
        "import_tensorflow()\n"  # loads TensorFlow as the tool does, its start-up log kept quiet
        "import keras\n"
        "real = keras.Model.save\n"
        "def save(self, path, *a, **k):\n"
        "    if 'best.keras' in str(path):\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device', str(path))\n"
        "    return real(self, path, *a, **k)\n"
        "keras.Model.save = save\n"
        "from tf_fusionnet.cli.train import run\n"
        "run()\n")
    result = subprocess.run([sys.executable, "-c", code, "--output", out, *TINY, "--epochs", "2"], cwd=str(tmp_path),
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert_one_line_error(result.returncode, result.stderr, 1,
                          r"cannot write .*best.keras \(No space left on device\): stopped before the first epoch "
                          r"finished; the same command resumes")
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]  # no half-written file left behind


def test_a_tf_config_port_in_use_is_one_line(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        env = dict(_env(), TF_CONFIG=json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}"]},
                                                 "task": {"type": "worker", "index": 0}}))
        out = str(tmp_path / "run")
        result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--output", out, *TINY,
                                 "--strategy", "multiworker"], cwd=str(tmp_path), env=env, capture_output=True,
                                text=True, timeout=300)
    finally:
        listener.close()
    assert_one_line_error(result.returncode, result.stderr, 1, rf"TF_CONFIG: port {port} of worker 0 .*cannot be "
                                                                r"used on this machine")


def test_a_malformed_tf_config_is_one_line(tmp_path):
    env = dict(_env(), TF_CONFIG='{"cluster": {}}')
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--output", str(tmp_path / "run"),
                             *TINY, "--strategy", "multiworker"], cwd=str(tmp_path), env=env, capture_output=True,
                            text=True, timeout=300)
    assert_one_line_error(result.returncode, result.stderr, 1, r"TF_CONFIG must be JSON")


def test_the_launcher_says_so_when_it_cannot_make_a_private_network(tmp_path, monkeypatch):
    from tf_fusionnet import launch

    monkeypatch.setattr(launch, "private_network_prefix", lambda: None)
    monkeypatch.delenv(launch._INSIDE, raising=False)
    (tmp_path / "train.py").write_text("")
    monkeypatch.chdir(tmp_path)
    assert launch.main(["--workers", "2", "train.py"]) == 1


def test_warmup_longer_than_the_run_is_refused_and_the_default_follows_the_papers_share():
    from tf_fusionnet.training import TrainConfig

    with pytest.raises(ValueError, match=r"--warmup_epochs must be below --epochs \(1\)"):
        TrainConfig(epochs=1, warmup_epochs=50).validate()
    with pytest.raises(ValueError, match=r"--warmup_epochs must be below --epochs \(5\)"):
        TrainConfig(epochs=5, warmup_epochs=5).validate()
    TrainConfig(epochs=5, warmup_epochs=0).validate()
    assert TrainConfig(epochs=300).warmup() == 20 and TrainConfig(epochs=30).warmup() == 2
    assert TrainConfig(epochs=1).warmup() == pytest.approx(1 / 15)
    assert TrainConfig(epochs=300, lr_schedule="step").warmup() == 0
    TrainConfig(epochs=1).validate()
