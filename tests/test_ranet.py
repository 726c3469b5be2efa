"""RANet (issue 16): structure against the official code, the resampling layer, the general stage
cut for all three models, and a train -> evaluate -> export -> cascade run of ranet-tiny."""

import json
import os

import keras
import numpy as np
import pytest

from tf_fusionnet import build_model, exit_macs
from tf_fusionnet.models.layers import AlignedBilinearResize
from tf_fusionnet.models.ranet import RANet, ranet_down_blocks, ranet_transition_blocks
from tf_fusionnet.models.stage_cut import cut_stages, node_of


def _align_corners_reference(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """PyTorch's bilinear ``align_corners=True`` sampling, written out: output pixel i reads
    input position i * (in - 1) / (out - 1)."""

    def axis_weights(n_in, n_out):
        pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = pos - lo
        w = np.zeros((n_out, n_in))
        w[np.arange(n_out), lo] += 1 - frac
        w[np.arange(n_out), hi] += frac
        return w

    wh, ww = axis_weights(x.shape[1], height), axis_weights(x.shape[2], width)
    return np.einsum("hi,nijc,wj->nhwc", wh, x, ww)


@pytest.mark.parametrize("size", [(16, 16), (4, 6), (9, 5)])
def test_resize_is_bilinear_with_aligned_corners(size):
    x = np.random.RandomState(0).rand(2, 8, 8, 3).astype("float32")
    out = np.asarray(AlignedBilinearResize(*size)(x))
    np.testing.assert_allclose(out, _align_corners_reference(x.astype(np.float64), *size), atol=1e-5)
    # Corners are the input's corners (what "aligned" means), unlike half-pixel sampling.
    np.testing.assert_allclose(out[:, [0, -1]][:, :, [0, -1]], x[:, [0, -1]][:, :, [0, -1]], atol=1e-6)
    # TensorFlow's op always returns float32; the layer hands back its compute dtype.
    assert AlignedBilinearResize(*size, dtype="mixed_bfloat16")(x).dtype == "bfloat16"


def test_official_rules_for_downsampling_and_transitions():
    # train_cifar.sh: scale-list 1-2-3-3, nBlocks 2, block-step 2 -> flows of 2, 4, 6, 8 blocks.
    blocks = [2, 4, 6, 8]
    assert [ranet_transition_blocks(b, s) for b, s in zip(blocks, [1, 2, 3, 3])] == [set(), {2}, {2, 4}, {2, 5}]
    assert [ranet_down_blocks(blocks, f, s) for f, s in [(1, 2), (2, 3), (3, 3)]] == [{2}, {2, 4}, {4, 6}]


@pytest.fixture(scope="module")
def ranet_cifar():
    return build_model("ranet-cifar")


def test_ranet_cifar_layout(ranet_cifar):
    model = ranet_cifar
    assert model.num_exits == 8
    # Flows start at 8x8, 16x16, 32x32, 32x32 and every exit classifies an 8x8 map.
    assert [tuple(model.get_layer(f"stem_{i}_relu").output.shape[1:3]) for i in (4, 3, 2, 1)] == [
        (8, 8), (16, 16), (32, 32), (32, 32)]
    for k in range(1, 9):
        assert tuple(model.get_layer(f"exit_{k}_conv1_conv").input.shape[1:3]) == (8, 8)
    # Flow 3 halves its resolution in blocks 2 and 4, flow 4 in blocks 4 and 6 (the `down` rule).
    assert model.get_layer("f3_b2_l4_cat").output.shape[1] == 16
    assert model.get_layer("f4_b3_l4_cat").output.shape[1] == 32
    assert model.get_layer("f4_b4_l4_cat").output.shape[1] == 16
    # A fusion layer: own map, up-sampled coarser features (floor(6 * 0.25) = 1 channel), 5 new ones.
    cat = model.get_layer("f3_b1_l1_cat")
    assert [int(t.shape[-1]) for t in cat.input] == [16, 1, 5]
    assert isinstance(node_of(cat.input[1]).operation, AlignedBilinearResize)


def test_official_initialisation(ranet_cifar):
    """normal(0, sqrt(2/n)), n = k*k*C_out, in the flows and heads; PyTorch's default in the first
    layer, which the official _init_weights never visits; zero Dense bias."""
    model = ranet_cifar
    body = model.get_layer("f1_b1_l1_3x3_conv").kernel
    kh, kw, _, c_out = body.shape
    assert float(np.std(np.asarray(body))) == pytest.approx(np.sqrt(2 / (kh * kw * c_out)), rel=0.1)
    stem = model.get_layer("stem_2_conv").kernel
    bound = 1 / np.sqrt(np.prod(stem.shape[:3]))
    assert np.abs(np.asarray(stem)).max() <= bound
    assert not np.any(np.asarray(model.get_layer("exit_1").bias))


def test_config_round_trip_and_refusals():
    model = RANet(num_classes=4, gr_factor=(2, 1), bn_factor=(2, 1), scale_list=(1, 2), n_channels=4,
                  growth_rate=4, num_blocks=1, block_step=1, step=2, step_mode="lg", head_channels=8)
    config = json.loads(json.dumps(model.get_config()))
    assert RANet.from_config(config).get_config() == model.get_config()
    with pytest.raises(ValueError, match="one entry per scale flow"):
        RANet(gr_factor=(4, 2, 1))
    with pytest.raises(ValueError, match="scale_list"):
        RANet(scale_list=(2, 1, 3, 3))
    with pytest.raises(TypeError, match="compres_factor"):
        RANet(compres_factor=0.5)


def _chain(stages, cut, x):
    pool, logits = {"image": x}, []
    for k, stage in enumerate(stages):
        out = stage([pool[n] for n in cut.input_names[k]], training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        logits.append(np.asarray(out[0]))
        pool.update({n: np.asarray(v) for n, v in zip(cut.output_names[k][1:], out[1:])})
    return logits


@pytest.mark.parametrize("preset", ["ranet-tiny", "msdnet-tiny", "fusionnet-tiny"])
def test_chained_stages_equal_the_model(preset):
    from tf_fusionnet.export.stages import stage_models

    model = build_model(preset)
    cut = cut_stages(model)
    x = np.random.RandomState(1).rand(2, 32, 32, 3).astype("float32")
    whole = [np.asarray(o) for o in model(x, training=False)]
    for a, b in zip(_chain(stage_models(model, cut), cut, x), whole):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Every node is in exactly one stage, and a stage reads only what earlier stages return.
    assert sum(len(n) for n in cut.nodes) == len({i for n in cut.nodes for i in n})
    returned = {"image"}
    for k in range(len(cut.nodes)):
        assert set(cut.input_names[k]) <= returned
        returned |= set(cut.output_names[k][1:])


def test_ranet_stages_read_several_stages_back(ranet_cifar):
    cut = cut_stages(ranet_cifar)
    made_by = {n: k for k, names in enumerate(cut.output_names) for n in names[1:]}
    # Stage 3 (flow 2, block 3) reads flow 1's blocks (stages 1 and 2) and the stem (stage 1).
    assert {made_by[n] for n in cut.input_names[2]} == {0, 1}
    # MSDNet's cut is still "the state after block k", nothing more.
    msdnet = build_model("msdnet-tiny")
    msd_cut = cut_stages(msdnet)
    for k in range(1, msdnet.num_exits):
        assert {id(t) for t in msd_cut.inputs[k]} == {id(t) for t in msdnet.block_state_tensors(k - 1)}


def test_ranet_trains_evaluates_exports_and_cascades(tmp_path):
    from tf_fusionnet.evaluation import report
    from tf_fusionnet.export.bundle import export_bundle
    from tf_fusionnet.export.cascade_runner import CascadeRunner
    from tf_fusionnet.training import TrainConfig, train

    run = str(tmp_path / "run")
    train(TrainConfig(preset="ranet-tiny", epochs=1, batch_size=64, verbose=0, output=run))
    summary = report.evaluate_run(run, verbose=0)
    assert [e["macs"] for e in summary["anytime"]] == exit_macs(build_model("ranet-tiny"))
    assert os.path.isfile(os.path.join(run, "eval", "anytime.png")) and summary["budgeted"]
    out = str(tmp_path / "bundle")
    result = export_bundle(run, out, precisions=("float32", "int8"), report_images=50, verbose=False)
    assert result["precisions"]["float32"]["within_1e-4"]
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["model_class"] == "RANet"
    assert any(set(s["inputs"]) - set(manifest["stages"][k - 1]["outputs"]) - {"image"}
               for k, s in enumerate(manifest["stages"]) if k > 0), "no stage reads past its predecessor"
    images = np.random.RandomState(0).randint(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    runner = CascadeRunner(out, precision="float32", thresholds=[0.0, 0.0, 0.0])
    assert [r["exit"] for r in runner.classify(images)] == [1] * 6
    runner = CascadeRunner(out, precision="float32")
    answers = runner.classify(images)
    assert [r["exit"] for r in answers] == [3] * 6
    expected = keras.saving.load_model(os.path.join(run, "model.keras"))(runner.preprocess(images))[-1]
    assert [r["class"] for r in answers] == list(np.asarray(expected).argmax(1))
    # int8: the converter gives two of stage 2's inputs other scales than stage 1 wrote them
    # with, so the runner requantises them on the way; the logits are still those of the same
    # stages with float32 boundaries (DEQUANTIZE/QUANTIZE inside TFLite).
    float_boundaries = str(tmp_path / "bundle_float_boundaries")
    export_bundle(run, float_boundaries, precisions=("int8",), report_images=50, verbose=False,
                  int8_boundaries=False)
    int8_runner = CascadeRunner(out, precision="int8")
    assert any(int8_runner._conversions), "no boundary to requantise: this test no longer covers it"
    got = int8_runner.all_exit_logits(images)
    expected = CascadeRunner(float_boundaries, precision="int8").all_exit_logits(images)
    steps = np.asarray([q["logits"][0] for q in int8_runner.stage_output_quantization])[:, None, None]
    assert np.max(np.abs(got - expected) / steps) <= 1.0 + 1e-3
