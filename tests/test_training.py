import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tf_fusionnet.training.config import TrainConfig
from tf_fusionnet.training.optimizers import TorchSGD
from tf_fusionnet.training.trainer import make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "fusionnet-tiny", "--batch_size", "64", "--verbose", "2"]


def _cmd(run_dir, *extra):
    return [sys.executable, os.path.join(ROOT, "train.py"), "--output", str(run_dir), *TINY, *extra]


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)


def _train(run_dir, *extra, timeout=600):
    return subprocess.run(_cmd(run_dir, *extra), capture_output=True, text=True, env=_env(), timeout=timeout, cwd=ROOT)


def _log_rows(run_dir):
    path = os.path.join(run_dir, "log.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _no_temp_files(run_dir):
    for root, _, files in os.walk(run_dir):
        assert not [f for f in files if f.startswith(".tmp-")], (root, files)


def test_train_end_to_end_on_embedded_sample(tmp_path):
    run = tmp_path / "run"
    result = _train(run, "--epochs", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "val acc" in result.stdout and "exit" in result.stdout
    for name in ("config.json", "split.json", "preprocessing.json", "model.keras", "best.keras", "log.csv"):
        assert (run / name).exists(), name
    assert (run / "tensorboard").is_dir()
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "fusionnet-tiny" and config["train"]["epochs"] == 1
    assert config["versions"]["tensorflow"] and "git_commit" in config
    assert config["num_train_images"] == 450 and config["num_val_images"] == 50
    rows = _log_rows(run)
    assert [r["epoch"] for r in rows] == ["1"]
    assert 0 < float(rows[0]["epoch_seconds"]) < 600
    for k in (1, 2, 3):
        assert f"exit_{k}_accuracy" in rows[0] and f"val_exit_{k}_accuracy" in rows[0]
    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    assert len(model.outputs) == 3
    split = json.loads((run / "split.json").read_text())
    assert len(split["val_indices"]) == 50
    _no_temp_files(run)


def test_killed_run_resumes_from_last_finished_epoch(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(run, "--epochs", "3"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env(), cwd=ROOT)
    deadline = time.time() + 400
    while time.time() < deadline and not os.path.exists(run / "backup" / "training_metadata.json"):
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(_log_rows(run))
    assert 1 <= done_before < 3
    _no_temp_files(run)

    result = _train(run, "--epochs", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = _log_rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    # The resumed run continued the schedule: the learning rate decays to ~0 at the end.
    assert float(rows[-1]["lr"]) < float(rows[0]["lr"]) or float(rows[0]["lr"]) == 0
    _no_temp_files(run)


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    run = tmp_path / "run"
    result = _train(run, "--epochs", "1", "--strategy", "mirrored", "--num_cpu_devices", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run / "config.json").read_text())["num_replicas"] == 2
    assert len(_log_rows(run)) == 1


def test_clear_errors(tmp_path):
    bad = _train(tmp_path / "a", "--dataset", str(tmp_path / "nowhere"))
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error: ") and "no such file" in bad.stderr
    bad_preset = _train(tmp_path / "b", "--preset", "resnet-1000")
    assert bad_preset.returncode == 1 and "Unknown preset" in bad_preset.stderr


def test_rerun_with_other_settings_is_refused(tmp_path):
    run = tmp_path / "run"
    (run).mkdir()
    config = TrainConfig(output=str(run), preset="fusionnet-tiny", batch_size=64, verbose=2, epochs=1)
    (run / "config.json").write_text(json.dumps({"train": config.to_dict()}))
    (run / "model.keras").write_bytes(b"an epoch finished")
    result = _train(run, "--epochs", "5")
    assert result.returncode == 1 and "epochs: 1 -> 5" in result.stderr
    # A run that never finished an epoch starts again under the new settings.
    (run / "model.keras").unlink()
    restarted = _train(run, "--epochs", "1", "--batch_size", "32")
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert "starting it again with these settings" in restarted.stdout
    assert json.loads((run / "config.json").read_text())["train"]["batch_size"] == 32


def test_optimizer_schedule_and_weight_decay():
    config = TrainConfig(epochs=10, warmup_epochs=2, batch_size=256)
    optimizer = make_optimizer(config, steps_per_epoch=10)
    schedule = optimizer.learning_rate if callable(optimizer.learning_rate) else optimizer._learning_rate
    lr = lambda step: float(schedule(step))
    assert config.peak_lr() == pytest.approx(0.05)  # 0.1 at batch 512, scaled linearly
    assert lr(0) == pytest.approx(0.0)
    assert lr(10) == pytest.approx(0.025, rel=1e-4)  # halfway through the warmup
    assert lr(20) == pytest.approx(0.05, rel=1e-4)
    assert lr(60) == pytest.approx(0.025, rel=1e-3)  # halfway through the cosine
    assert lr(100) == pytest.approx(0.0, abs=1e-7)
    # The default is PyTorch's coupled decay on every parameter, as the official recipe.
    assert isinstance(optimizer, TorchSGD) and optimizer.coupled_weight_decay == 1e-4
    assert optimizer.exclude_from_decay == []
    # The old behaviour stays available: Keras's decoupled decay, kernels only.
    keras_sgd = make_optimizer(
        TrainConfig(weight_decay_style="decoupled", decay_norm_and_bias=False), steps_per_epoch=10
    )
    assert isinstance(keras_sgd, keras.optimizers.SGD) and keras_sgd.weight_decay == 1e-4
    kernel = keras.Variable(np.ones((3, 3)), name="kernel")
    gamma = keras.Variable(np.ones(3), name="gamma")
    bias = keras.Variable(np.ones(3), name="bias")
    keras_sgd.build([kernel, gamma, bias])
    assert keras_sgd._use_weight_decay(kernel)
    assert not keras_sgd._use_weight_decay(gamma) and not keras_sgd._use_weight_decay(bias)


def _torch_sgd_reference(w0, lrs, momentum, wd, nesterov=False):
    """torch.optim.SGD with zero data gradient, as the closed-form linear map of (w, buf) per step."""
    state = np.stack([w0, np.zeros_like(w0)]).astype(np.float64)  # rows: w, buf
    trajectory = []
    for lr in lrs:
        # d = wd * w; buf' = momentum * buf + d; w' = w - lr * (d + momentum * buf' if nesterov else buf')
        buf_map = np.array([[wd, momentum]])
        step_map = (np.array([[wd, 0.0]]) + momentum * buf_map) if nesterov else buf_map
        w_map = np.array([[1.0, 0.0]]) - lr * step_map
        state = np.concatenate([w_map, buf_map]) @ state
        trajectory.append(state[0].copy())
    return np.array(trajectory)


@pytest.mark.parametrize("nesterov", [False, True])
def test_torch_sgd_reproduces_pytorch_trajectory(nesterov):
    w0 = np.array([1.0, -2.0, 0.5], np.float32)
    lr_schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=20, warmup_target=0.5, warmup_steps=5
    )
    optimizer = TorchSGD(learning_rate=lr_schedule, momentum=0.9, weight_decay=0.05, nesterov=nesterov)
    w = keras.Variable(w0, name="kernel")
    got = []
    for _ in range(25):
        optimizer.apply_gradients([(np.zeros(3, np.float32), w)])
        got.append(np.asarray(w.value))
    lrs = [float(lr_schedule(step)) for step in range(25)]
    expected = _torch_sgd_reference(w0, lrs, 0.9, 0.05, nesterov)
    np.testing.assert_allclose(np.array(got), expected, rtol=0, atol=1e-6)
    # Ten times Keras's decoupled decay at steady state: PyTorch's shrinks w by lr*wd/(1-m) per step.
    assert abs(expected[-1][0]) < 0.5 * abs(w0[0])


def test_torch_sgd_exclusions_and_config_round_trip():
    optimizer = TorchSGD(learning_rate=0.1, momentum=0.9, weight_decay=0.1, exclude_from_decay=["gamma"])
    kernel = keras.Variable(np.ones(2, np.float32), name="kernel")
    gamma = keras.Variable(np.ones(2, np.float32), name="gamma")
    for _ in range(3):
        optimizer.apply_gradients([(np.zeros(2, np.float32), kernel), (np.zeros(2, np.float32), gamma)])
    np.testing.assert_array_equal(np.asarray(gamma.value), [1.0, 1.0])
    assert np.all(np.asarray(kernel.value) < 1.0)
    clone = TorchSGD.from_config(optimizer.get_config())
    assert clone.get_config() == optimizer.get_config()
    with pytest.raises(ValueError, match="momentum"):
        TorchSGD(momentum=1.5)
