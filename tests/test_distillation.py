"""Exit distillation (issue 33): the soft term against a numpy reference, the stopped teacher
gradient, and the same loss in ``fit`` (``compute_loss``) and in the multi-worker step."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_fusionnet.presets import build_model
from tf_fusionnet.training.config import TrainConfig
from tf_fusionnet.training.distillation import ExitDistillation, distillation_loss, distillation_terms
from tf_fusionnet.training.distributed import replica_loss
from tf_fusionnet.training.trainer import compile_for_training


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _kl(q, p):
    return np.sum(q * (np.log(q) - np.log(p)), axis=-1)


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(5, 4)).astype(np.float32) * s for s in (1.0, 2.0, 3.0)]


@pytest.mark.parametrize("teacher", ["last", "later_mean"])
def test_terms_are_the_kl_divergence_from_the_teacher_at_temperature_t(logits, teacher):
    t = 2.5
    got = [np.asarray(v) for v in distillation_terms(logits, ExitDistillation(0.5, t, teacher))]
    soft = [_softmax(z / t) for z in logits]
    teachers = [soft[2], soft[2]] if teacher == "last" else [(soft[1] + soft[2]) / 2, soft[2]]
    want = [_kl(teachers[k], soft[k]) for k in range(2)]
    assert len(got) == 2
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    # The two teachers differ for exit 1 (mean of exits 2 and 3 against exit 3 alone), so the
    # switch is not a no-op.
    other = "later_mean" if teacher == "last" else "last"
    assert not np.allclose(got[0], np.asarray(distillation_terms(logits, ExitDistillation(0.5, t, other))[0]))


def test_the_teacher_gets_no_gradient_from_the_soft_term(logits):
    variables = [tf.Variable(z) for z in logits]
    with tf.GradientTape() as tape:
        loss = distillation_loss(variables, ExitDistillation(0.7, 3.0, "later_mean"), [1.0, 1.0, 1.0])
    grads = tape.gradient(loss, variables)
    assert grads[2] is None or np.all(np.asarray(grads[2]) == 0)  # the last exit is only a teacher
    assert np.any(np.asarray(grads[0]) != 0) and np.any(np.asarray(grads[1]) != 0)


def test_weights_split_the_hard_and_soft_terms():
    d = ExitDistillation(0.25, 2.0)
    assert d.hard_weights([1.0, 2.0, 4.0]) == [0.75, 1.5, 4.0]
    assert d.soft_weights([1.0, 2.0, 4.0]) == [1.0, 2.0]  # alpha * w * T^2
    assert not ExitDistillation(0.0).enabled
    for bad in (dict(alpha=1.5), dict(alpha=0.5, temperature=0), dict(alpha=0.5, teacher="first")):
        with pytest.raises(ValueError):
            ExitDistillation(**bad)


def _batch(num_classes=10, n=8):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
    labels = keras.utils.to_categorical(rng.integers(0, num_classes, n), num_classes)
    return images, labels


@pytest.mark.parametrize("preset", ["msdnet-tiny", "fusionnet-tiny", "ranet-tiny"])
def test_fit_and_the_multiworker_step_minimise_the_same_loss(preset):
    """``compute_loss`` (what ``fit`` differentiates) = hard CE with (1 - alpha) weights + the soft
    term, and the multi-worker ``replica_loss`` gives the same number on one replica."""
    keras.utils.set_random_seed(0)
    model = build_model(preset)
    images, labels = _batch()
    config = TrainConfig(preset=preset, distill_alpha=0.6, distill_temperature=2.0, distill_teacher="later_mean",
                         exit_weights="1,2,3", label_smoothing=0.1)
    compile_for_training(model, config, steps_per_epoch=1, jit_compile=False)
    outputs = model(images, training=False)
    y = [labels] * model.num_exits
    fit_loss = float(model.compute_loss(x=images, y=y, y_pred=outputs, training=True))

    ce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    hard = [0.4 * 1, 0.4 * 2, 3.0]
    soft = distillation_terms(outputs, config.distillation())
    want = sum(w * float(ce(labels, z)) for w, z in zip(hard, outputs))
    want += sum(0.6 * w * 4.0 * float(np.mean(t)) for w, t in zip([1, 2], soft))
    assert fit_loss == pytest.approx(want, rel=1e-5)

    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1, reduction=None)
    step_loss, _ = replica_loss(outputs, y, loss_fn, [1.0, 2.0, 3.0], config.distillation(), len(images))
    assert float(step_loss) == pytest.approx(fit_loss, rel=1e-5)

    # Validation (training=False) scores the hard part only; alpha 0 is the plain recipe.
    assert float(model.compute_loss(x=images, y=y, y_pred=outputs, training=False)) < fit_loss
    compile_for_training(model, TrainConfig(preset=preset, exit_weights="1,2,3"), 1, False)
    assert model.training_loss_term is None
    plain = float(model.compute_loss(x=images, y=y, y_pred=outputs, training=True))
    assert plain == pytest.approx(sum(w * float(ce(labels, z)) for w, z in zip([1, 2, 3], outputs)), rel=1e-5)


def test_a_distilled_run_records_its_settings_and_refuses_to_resume_without_them(tmp_path):
    from tf_fusionnet.training import train

    run = str(tmp_path / "run")
    config = dict(preset="msdnet-tiny", epochs=1, batch_size=64, verbose=0, output=run, mix_prob=0.0)
    result = train(TrainConfig(**config, distill_alpha=0.5, distill_temperature=4.0))
    assert np.isfinite(result["logs"]["loss"])
    with open(f"{run}/config.json") as f:
        recorded = json.load(f)["train"]
    assert (recorded["distill_alpha"], recorded["distill_temperature"], recorded["distill_teacher"]) == (0.5, 4.0, "last")
    with pytest.raises(ValueError, match="distill_alpha"):
        train(TrainConfig(**{**config, "epochs": 2}))
