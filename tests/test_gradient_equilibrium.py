"""IMTA's gradient equilibrium (issue 33's second switch): the forward pass and the cost stay the
model's own; only the gradients into a block's coarsest scale are rescaled."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tf_fusionnet import FusionNet, build_model, exit_macs
from tf_fusionnet.runs.folder import check_same_architecture
from tf_fusionnet.training.config import TrainConfig


def _pair(preset):
    plain = build_model(preset)
    balanced = build_model(preset, gradient_equilibrium=True)
    for layer in balanced.layers:
        if layer.weights:
            layer.set_weights(plain.get_layer(layer.name).get_weights())
    return plain, balanced


def _close(actual, expected, path):
    """Equal up to float reordering (oneDNN sums in another order in the two graphs)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert np.linalg.norm(actual - expected) <= 1e-3 * np.linalg.norm(expected) + 1e-9, path


def _gradients(model, images, exit_index):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(images, training=True)[exit_index] ** 2)
    return {v.path: g for v, g in zip(model.trainable_variables,
                                      tape.gradient(loss, model.trainable_variables)) if g is not None}


@pytest.mark.parametrize("preset", ["fusionnet-tiny", "msdnet-tiny"])
def test_the_forward_pass_and_the_cost_are_unchanged(preset, tmp_path):
    plain, balanced = _pair(preset)
    images = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    for a, b in zip(plain(images, training=False), balanced(images, training=False)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert exit_macs(balanced) == exit_macs(plain)
    assert balanced.get_config()["gradient_equilibrium"] is True
    path = str(tmp_path / "m.keras")
    balanced.save(path)
    import keras

    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.get_config() == balanced.get_config()


@pytest.mark.parametrize("preset", ["fusionnet-tiny", "msdnet-tiny"])
def test_every_exit_reaches_the_first_block_with_one_kth_of_its_gradient(preset):
    """Exit 1 reaches everything before it through the first block's coarsest scale only: every
    gradient it sends there is 1/K of the plain model's. The last exit's own head and block are
    not rescaled (1/(K - K + 1) = 1)."""
    plain, balanced = _pair(preset)
    images = np.random.default_rng(1).random((4, 32, 32, 3)).astype("float32")
    num_exits = len(plain.outputs)
    first_plain, first_balanced = _gradients(plain, images, 0), _gradients(balanced, images, 0)
    assert set(first_plain) == set(first_balanced)
    for path, gradient in first_plain.items():
        expected = gradient.numpy() if "exit_1" in path else gradient.numpy() / num_exits
        _close(first_balanced[path], expected, path)
    last_plain, last_balanced = _gradients(plain, images, -1), _gradients(balanced, images, -1)
    own = [p for p in last_plain if f"exit_{num_exits}" in p or p.startswith(f"b{num_exits}_")]
    assert own
    for path in own:
        _close(last_balanced[path], last_plain[path], path)
    stem = [p for p in last_plain if p.startswith("stem")]
    assert any(np.linalg.norm(last_balanced[p] - last_plain[p]) > 0.05 * np.linalg.norm(last_plain[p]) for p in stem)


def test_the_recipe_switch_builds_it_and_refuses_ranet():
    assert TrainConfig(gradient_equilibrium=True).model_overrides() == {"gradient_equilibrium": True}
    assert TrainConfig().model_overrides() == {}
    TrainConfig(preset="msdnet-cifar-anytime", gradient_equilibrium=True).validate()
    with pytest.raises(ValueError, match="--gradient_equilibrium must be off for a RANet preset"):
        TrainConfig(preset="ranet-cifar", gradient_equilibrium=True).validate()


def test_runs_recorded_before_the_switch_resume_and_a_changed_switch_does_not(tmp_path):
    plain = FusionNet.from_config(build_model("fusionnet-tiny").get_config())
    recorded = {k: v for k, v in plain.get_config().items() if k != "gradient_equilibrium"}
    (tmp_path / "config.json").write_text(json.dumps({"model_config": recorded}))
    check_same_architecture(str(tmp_path), plain)
    with pytest.raises(ValueError, match="gradient_equilibrium: False -> True"):
        check_same_architecture(str(tmp_path), build_model("fusionnet-tiny", gradient_equilibrium=True))
