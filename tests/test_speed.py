"""The training-speed machinery: fused BatchNorm, batched crop/flip, precision/thread choice, epoch timings."""

import csv
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_fusionnet.data.pipeline import random_crop_and_flip
from tf_fusionnet.models.layers import BatchNormalization as FusedBatchNormalization
from tf_fusionnet.training.callbacks import EpochCSVLog
from tf_fusionnet.training.precision import machine_precision, resolve_precision, resolve_threads


def _pair(momentum=0.9, epsilon=1e-5):
    fused = FusedBatchNormalization(momentum=momentum, epsilon=epsilon)
    plain = keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon)
    x = np.random.RandomState(0).normal(3.0, 2.0, (8, 5, 5, 6)).astype("float32")
    fused.build(x.shape)
    plain.build(x.shape)
    gamma = np.random.RandomState(1).uniform(0.5, 1.5, 6).astype("float32")
    beta = np.random.RandomState(2).normal(size=6).astype("float32")
    for layer in (fused, plain):
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    return fused, plain, x


def test_fused_batch_norm_matches_keras_in_training_and_inference():
    fused, plain, x = _pair()
    np.testing.assert_allclose(fused(x, training=True), plain(x, training=True), atol=2e-5)
    # Moving mean as Keras; moving variance from the unbiased batch variance (PyTorch's rule).
    np.testing.assert_allclose(fused.moving_mean, plain.moving_mean, atol=1e-5)
    n = x.shape[0] * x.shape[1] * x.shape[2]
    unbiased = x.reshape(-1, 6).var(0) * n / (n - 1)
    np.testing.assert_allclose(fused.moving_variance.numpy(), 0.9 + 0.1 * unbiased, rtol=1e-5)
    plain.moving_variance.assign(fused.moving_variance)
    np.testing.assert_allclose(fused(x, training=False), plain(x, training=False), atol=2e-5)


def test_fused_batch_norm_gradients_match_keras():
    fused, plain, x = _pair()
    x = tf.constant(x)
    grads = []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.sin(layer(x, training=True)))
        grads.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_fused_batch_norm_frozen_layer_uses_moving_statistics():
    fused, plain, x = _pair()
    fused.trainable = False
    before = fused.moving_mean.numpy().copy()
    y = fused(x, training=True)
    np.testing.assert_array_equal(fused.moving_mean.numpy(), before)
    np.testing.assert_allclose(y, plain(x, training=False), atol=2e-5)


def test_fused_batch_norm_bfloat16_policy_keeps_float32_statistics():
    layer = FusedBatchNormalization(dtype="mixed_bfloat16")
    x = tf.cast(tf.random.normal([4, 3, 3, 8]), tf.bfloat16)
    y = layer(x, training=True)
    assert y.dtype == tf.bfloat16
    assert layer.moving_mean.dtype == "float32"


def test_models_saved_with_keras_batch_norm_still_load(tmp_path, monkeypatch):
    """A .keras file written before the fused layer (Keras's BatchNormalization) loads unchanged."""
    from tf_fusionnet.models import blocks
    from tf_fusionnet.presets import build_model

    monkeypatch.setattr(blocks, "FusedBatchNormalization", keras.layers.BatchNormalization)
    old = build_model("fusionnet-tiny")
    assert isinstance(old.get_layer("stem_conv1_bn"), keras.layers.BatchNormalization)
    assert not isinstance(old.get_layer("stem_conv1_bn"), FusedBatchNormalization)
    x = np.random.RandomState(0).randn(4, 32, 32, 3).astype("float32")
    for layer in old.layers:  # moving statistics away from their initial values
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.1, "float32"))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 2.0, "float32"))
    path = str(tmp_path / "old.keras")
    old.save(path)
    monkeypatch.undo()
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("stem_conv1_bn"), FusedBatchNormalization)
    for a, b in zip(old(x, training=False), loaded(x, training=False)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    new_path = str(tmp_path / "new.keras")
    loaded.save(new_path)  # and what is saved now loads where Keras's layer is used
    monkeypatch.setattr(blocks, "FusedBatchNormalization", keras.layers.BatchNormalization)
    np.testing.assert_allclose(keras.saving.load_model(new_path)(x)[0], loaded(x)[0], atol=1e-5)


def test_runs_saved_while_the_fused_layer_had_its_own_class_name_load(tmp_path, monkeypatch):
    """From a5171dd to 1101940 the fused layer was the class FusedBatchNormalization, so its weights
    were saved as layers/fused_batch_normalization_N: evaluation, export and resume read them."""
    from tf_fusionnet.runs.reading import _load_with_legacy_layer_names
    from tf_fusionnet.models import blocks
    from tf_fusionnet.models.legacy_weights import renamed_copy
    from tf_fusionnet.presets import build_model
    from tf_fusionnet.training.callbacks import AtomicBackupAndRestore

    class FusedBatchNormalization(blocks.FusedBatchNormalization):  # the old class name
        pass

    monkeypatch.setattr(blocks, "FusedBatchNormalization", FusedBatchNormalization)
    old = build_model("fusionnet-tiny")
    x = np.random.RandomState(0).randn(4, 32, 32, 3).astype("float32")
    for i, layer in enumerate(l for l in old.layers if isinstance(l, keras.layers.BatchNormalization)):
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.01 * i, "float32"))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 1.0 + 0.1 * i, "float32"))
    path, weights = str(tmp_path / "model.keras"), str(tmp_path / "latest.weights.h5")
    old.save(path)
    old.compile(optimizer=keras.optimizers.SGD(momentum=0.9))  # a backup holds the optimizer's state too
    old.optimizer.build(old.trainable_variables)
    old.save_weights(weights)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="could not be loaded"):
        keras.saving.load_model(path, safe_mode=True, compile=False)
    loaded = _load_with_legacy_layer_names(path)
    expected = old(x, training=False)
    for a, b in zip(expected, loaded(x, training=False)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # Resume: the backup callback restores such a weights file through a renamed copy.
    backup = AtomicBackupAndRestore(str(tmp_path / "backup"))
    os.makedirs(backup.backup_dir)
    shutil.copyfile(weights, backup._weights_path)
    fresh = build_model("fusionnet-tiny")
    fresh.compile(optimizer=keras.optimizers.SGD(momentum=0.9))
    backup.set_model(fresh)
    backup._load_model()
    for a, b in zip(expected, fresh(x, training=False)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # A file of today's names is not touched, and one with no legacy names gives no copy.
    fresh.save(str(tmp_path / "today.keras"))
    assert renamed_copy(str(tmp_path / "today.keras"), str(tmp_path / "backup")) is None


def test_crop_and_flip_is_a_shifted_window_of_the_padded_image():
    images = tf.constant(np.arange(3 * 6 * 6 * 2).reshape(3, 6, 6, 2) % 251 + 1, tf.uint8)
    padded = np.pad(images.numpy(), [(0, 0), (2, 2), (2, 2), (0, 0)])
    seen_offsets, flips = set(), set()
    for seed in range(40):
        out = random_crop_and_flip(images, 2, True, tf.constant([seed, 7], tf.int64)).numpy()
        assert out.dtype == np.uint8 and out.shape == images.shape
        for i in range(3):
            match = [(r, c, f) for r in range(5) for c in range(5) for f in (False, True)
                     if np.array_equal(out[i], (padded[i, r:r + 6, c:c + 6][:, ::-1] if f
                                                else padded[i, r:r + 6, c:c + 6]))]
            assert match, "every output is a (possibly flipped) 6x6 window of the padded image"
            seen_offsets.add(match[0][:2])
            flips.add(match[0][2])
    assert len(seen_offsets) > 15 and flips == {False, True}
    same = random_crop_and_flip(images, 2, True, tf.constant([3, 7], tf.int64))
    np.testing.assert_array_equal(same, random_crop_and_flip(images, 2, True, tf.constant([3, 7], tf.int64)))
    np.testing.assert_array_equal(random_crop_and_flip(images, 0, False, tf.constant([1, 2], tf.int64)), images)


def test_precision_choice():
    assert machine_precision(["avx2", "avx512_bf16"], gpus=[]) == "mixed_bfloat16"
    assert machine_precision(["avx2", "amx_bf16"], gpus=[]) == "mixed_bfloat16"
    assert machine_precision(["avx2", "avx512f"], gpus=[]) == "float32"
    assert resolve_precision("float32") == "float32"
    # A resumed run keeps the precision it started with, whatever this machine would choose.
    assert resolve_precision("auto", {"precision": "mixed_bfloat16"}) == "mixed_bfloat16"
    assert resolve_precision("auto", {"train": {"mixed_precision": True}}) == "mixed_float16"
    assert resolve_precision("auto", {"train": {}}) == "float32"
    with pytest.raises(ValueError, match="--precision"):
        resolve_precision("fp8")


def test_thread_choice():
    assert resolve_threads(-1, -1, gpus=[], cores=2) == (2, 1)
    assert resolve_threads(-1, -1, gpus=[], cores=16) == (0, 0)
    assert resolve_threads(-1, -1, gpus=["gpu"], cores=2) == (0, 0)
    assert resolve_threads(4, -1, gpus=[], cores=2) == (4, 1)
    assert resolve_threads(0, 0, gpus=[], cores=2) == (0, 0)


class _FakeModel:
    optimizer = None


def test_epoch_log_splits_train_and_validation_time(tmp_path, monkeypatch):
    now = [0.0]
    monkeypatch.setattr("tf_fusionnet.training.callbacks.time.perf_counter", lambda: now[0])
    log = EpochCSVLog(str(tmp_path / "log.csv"), batch_size=8)
    log.set_model(_FakeModel())

    def at(t, call, *args):
        now[0] = t
        call(*args)

    at(0.0, log.on_epoch_begin, 0)
    for step, t in enumerate((10.0, 12.0, 14.0, 16.0)):  # the first step includes tracing
        at(t, log.on_train_batch_end, step)
    at(20.0, log.on_test_begin)
    at(21.0, log.on_epoch_end, 0, {"loss": 1.0})
    at(30.0, log.on_epoch_begin, 1)
    at(33.0, log.on_train_batch_end, 0)  # one step only
    at(34.0, log.on_epoch_end, 1, {"loss": 0.5})
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert (rows[0]["epoch_seconds"], rows[0]["train_seconds"], rows[0]["val_seconds"]) == ("21.0", "20.0", "1.0")
    assert float(rows[0]["train_images_per_second"]) == pytest.approx(3 * 8 / 10.0)  # steps 2-4 over t=10..20
    assert (rows[1]["epoch_seconds"], rows[1]["val_seconds"]) == ("4.0", "0.0")
    assert rows[1]["train_images_per_second"] == ""  # a one-step epoch has no steady state
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_auto_threads_leave_a_started_runtime_alone():
    from tf_fusionnet.training.config import TrainConfig
    from tf_fusionnet.training.trainer import setup_strategy

    tf.constant(1.0) + 1.0  # the runtime is up: its thread pools can no longer change
    setup_strategy(TrainConfig())  # auto: keeps them, no error
    current = tf.config.threading.get_inter_op_parallelism_threads()
    setup_strategy(TrainConfig(inter_op_threads=current, intra_op_threads=-1))  # unchanged value: fine
    with pytest.raises(RuntimeError):
        setup_strategy(TrainConfig(inter_op_threads=current + 3))
