import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tf_fusionnet import FusionNet, MSDNet, build_model, exit_macs, preset_names, trainable_params
from tf_fusionnet.models.macs import ancestor_nodes
from tf_fusionnet.models.blocks import block_steps, scale_schedule

# Measured with the official MSDNet-PyTorch op_counter, batch 1, 32x32.
OFFICIAL = {
    ("msdnet-cifar-anytime", 10): (
        [15.129, 25.483, 37.061, 46.285, 57.277, 66.891, 75.856], 2_986_690),
    ("msdnet-cifar-anytime", 100): (
        [15.140, 25.506, 37.096, 46.331, 57.336, 66.961, 75.938], 3_067_960),
    ("msdnet-cifar-budgeted", 10): ([6.848, 14.327, 27.502, 41.668, 58.423], 2_020_874),
    ("msdnet-cifar-budgeted", 100): ([6.860, 14.350, 27.537, 41.715, 58.481], 2_078_924),
    # The official RANet-pytorch op_counter (train_cifar.sh with args.py defaults), from issue 16.
    ("ranet-cifar", 10): ([15.814, 31.283, 44.655, 50.358, 60.655, 63.648, 90.174, 94.905], 3_261_830),
    ("ranet-cifar", 100): ([15.826, 31.306, 44.690, 50.405, 60.713, 63.718, 90.255, 94.997], 3_354_710),
}


@pytest.mark.parametrize("preset,num_classes", sorted(OFFICIAL))
def test_baselines_match_official_counts(preset, num_classes):
    expected_macs, expected_params = OFFICIAL[(preset, num_classes)]
    model = build_model(preset, num_classes=num_classes)
    macs = exit_macs(model)
    assert len(macs) == len(expected_macs)
    # The official counter prints MMACs to three decimals: every digit must match.
    assert [round(m / 1e6, 3) for m in macs] == expected_macs
    assert trainable_params(model) == expected_params


# This project's own figures (no official code exists): pinned so that a change to the
# graph or the counter shows up here and in docs/architecture.md together.
FUSIONNET_CIFAR_MACS = [16.795, 24.892, 34.237, 41.330, 49.749, 56.493, 63.125]
FUSIONNET_CIFAR_MSDNET_TRANSITION_MACS = [16.795, 24.892, 34.770, 41.862, 50.282, 58.019, 64.651]


def test_fusionnet_cifar_budget():
    model = build_model("fusionnet-cifar")
    macs = exit_macs(model)
    assert len(model.outputs) == 7
    assert [round(m / 1e6, 3) for m in macs] == FUSIONNET_CIFAR_MACS
    assert trainable_params(model) == 4_925_326
    # The paper: the last exit costs 15% less than MSDNet's (75.856M).
    assert macs[-1] <= 0.85 * exit_macs(build_model("msdnet-cifar-anytime"))[-1]
    assert all(a < b for a, b in zip(macs, macs[1:]))


def test_paper_transition_does_not_read_the_dropped_scale():
    paper = build_model("fusionnet-cifar")
    msdnet_style = build_model("fusionnet-cifar", transition="msdnet")
    assert [round(m / 1e6, 3) for m in exit_macs(msdnet_style)] == FUSIONNET_CIFAR_MSDNET_TRANSITION_MACS
    # Scale 1 is dropped at layer 7 (block 3, layer 1), scale 2 at layer 13 (block 6, layer 1).
    names = {layer.name for layer in paper.layers}
    for drop_layer, new_finest in (("b3_l1", "s2"), ("b6_l1", "s3")):
        assert f"{drop_layer}_{new_finest}_down_3x3_conv" not in names
        assert f"{drop_layer}_{new_finest}_down_3x3_conv" in {layer.name for layer in msdnet_style.layers}
        # What remains is MSDNet's normal half (half the growth), then the per-scale 1x1 transition.
        normal = paper.get_layer(f"{drop_layer}_{new_finest}_normal_3x3_conv")
        assert normal.filters == msdnet_style.get_layer(f"{drop_layer}_{new_finest}_normal_3x3_conv").filters
        assert paper.get_layer(f"{drop_layer}_transition_{new_finest}_conv").kernel_size == (1, 1)
    # The dropped scale is not handed to the next stage either.
    assert len(paper.block_state_tensors(1)) == 2 and len(msdnet_style.block_state_tensors(1)) == 3
    assert len(paper.block_state_tensors(4)) == 1 and len(msdnet_style.block_state_tensors(4)) == 2
    # The scale-2 layers of block 3 read nothing computed at scale 1 after block 2.
    for name in ("b3_l1_s2_normal_3x3_conv", "b3_l2_s2_normal_3x3_conv"):
        assert "b3_l1_s1_normal_3x3_conv" not in _layer_ancestor_names(paper, name)


def test_fusionnet_with_every_switch_off_is_msdnet():
    msdnet = build_model("msdnet-cifar-anytime")
    plain = FusionNet(
        n_channels=16, growth_rate=6, fusion=False, efficient_stem=False, head_type="msdnet",
        transition="msdnet",
    )
    assert exit_macs(plain) == exit_macs(msdnet)
    assert trainable_params(plain) == trainable_params(msdnet)


def _layer_ancestor_names(model, layer_name):
    nodes = ancestor_nodes([model.get_layer(layer_name).output])
    return {node.operation.name for node in nodes.values()}


def test_fusion_reads_current_layer_of_finer_scale():
    # Layer 2 of block 1: the strided path into scale 2 reads scale 1 after layer 2
    # with fusion, after layer 1 without.
    fused = build_model("fusionnet-tiny", base=2)
    plain = build_model("fusionnet-tiny", base=2, fusion=False)
    down = "b1_l2_s2_down_3x3_conv"
    assert "b1_l2_s1_normal_3x3_conv" in _layer_ancestor_names(fused, down)
    assert "b1_l2_s1_normal_3x3_conv" not in _layer_ancestor_names(plain, down)
    # The regular path reads only its own scale up to the previous layer.
    assert "b1_l2_s1_normal_3x3_conv" not in _layer_ancestor_names(fused, "b1_l2_s2_normal_3x3_conv")
    assert exit_macs(fused)[-1] > exit_macs(plain)[-1]


def test_efficient_stem_structure():
    model = build_model("fusionnet-tiny")
    residual = model.get_layer("stem_residual")
    assert [t.shape[1:] for t in residual.input] == [(32, 32, 8), (32, 32, 8)]
    assert model.get_layer("stem_dwsep4_dw").strides == (2, 2)
    # stem_stride=2 halves the finest scale: 16/8/4 on 32x32 inputs.
    stem_outputs = ("stem_dwsep4_pw_relu", "stem_s2_relu", "stem_s3_relu")
    assert [model.get_layer(n).output.shape[1] for n in stem_outputs] == [16, 8, 4]
    full = build_model("fusionnet-tiny", stem_stride=1)
    assert [full.get_layer(n).output.shape[1] for n in stem_outputs] == [32, 16, 8]
    msd_stem = build_model("fusionnet-tiny", efficient_stem=False)
    with pytest.raises(ValueError):
        msd_stem.get_layer("stem_residual")


def test_fusion_head_structure():
    model = build_model("fusionnet-tiny")
    assert model.get_layer("exit_1_conv1_conv").strides == (2, 2)
    assert model.get_layer("exit_1_conv2_conv").kernel_size == (1, 1)
    msd = build_model("msdnet-tiny")
    assert msd.get_layer("exit_1_conv2_conv").kernel_size == (3, 3)


def test_block_layout_and_scale_schedule():
    assert block_steps(7, "even", 2, 4) == [4, 2, 2, 2, 2, 2, 2]
    assert block_steps(5, "lin_grow", 1, 1) == [1, 2, 3, 4, 5]
    # 16 layers, interval 6: scale 1 dropped at layer 7, scale 2 at layer 13.
    schedule = scale_schedule(16, 3)
    assert schedule[0] == (3, 3) and schedule[5] == (3, 3)
    assert schedule[6] == (3, 2) and schedule[7] == (2, 2)
    assert schedule[12] == (2, 1) and schedule[15] == (1, 1)


@pytest.mark.parametrize("preset", ["fusionnet-tiny", "msdnet-tiny", "ranet-tiny"])
@pytest.mark.parametrize("shape,classes", [((16, 16, 3), 10), ((28, 28, 1), 7), ((64, 64, 3), 100), ((33, 45, 2), 3)])
def test_any_input_shape_and_classes(preset, shape, classes):
    model = build_model(preset, num_classes=classes, image_shape=shape)
    outputs = model(np.random.rand(2, *shape).astype("float32"), training=False)
    assert len(outputs) == 3
    for logits in outputs:
        assert logits.shape == (2, classes)
        assert np.all(np.isfinite(np.asarray(logits)))


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="at least 16x16"):
        build_model("fusionnet-tiny", image_shape=(8, 8, 3))


@pytest.mark.parametrize("preset", ["fusionnet-tiny", "msdnet-tiny", "ranet-tiny"])
def test_keras_round_trip_safe_mode(preset, tmp_path):
    model = build_model(preset, num_classes=5, image_shape=(20, 24, 3))
    x = np.random.RandomState(0).rand(3, 20, 24, 3).astype("float32")
    # One training step so BatchNorm statistics and weights are not at init.
    model.compile(optimizer="sgd", loss=["sparse_categorical_crossentropy"] * 3)
    model.fit(x, [np.array([0, 1, 2])] * 3, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    for a, b in zip(model(x, training=False), loaded(x, training=False)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _conv_std(model, name):
    return float(np.std(np.asarray(model.get_layer(name).kernel)))


def test_initializers_follow_the_official_code():
    """"pytorch": PyTorch's default init, which is what the official code runs (its
    _init_weights never reaches a conv); "msdnet": the normal(0, sqrt(2/(k*k*C_out))) it declares."""
    torch_init = build_model("msdnet-tiny", initializer="pytorch")
    declared = build_model("msdnet-tiny", initializer="msdnet")
    conv = torch_init.get_layer("stem_s2_conv")  # 3x3, 8 -> 16 channels
    kh, kw, c_in, c_out = conv.kernel.shape
    bound = 1 / np.sqrt(kh * kw * c_in)
    assert np.abs(np.asarray(conv.kernel)).max() <= bound
    assert _conv_std(torch_init, "stem_s2_conv") == pytest.approx(bound / np.sqrt(3), rel=0.1)
    assert _conv_std(declared, "stem_s2_conv") == pytest.approx(np.sqrt(2 / (kh * kw * c_out)), rel=0.1)
    dense = torch_init.get_layer("exit_1")
    bias_bound = 1 / np.sqrt(dense.kernel.shape[0])
    assert np.any(np.asarray(dense.bias) != 0) and np.abs(np.asarray(dense.bias)).max() <= bias_bound
    assert not np.any(np.asarray(declared.get_layer("exit_1").bias))
    # Depthwise: PyTorch's fan_in of a (C, 1, 3, 3) weight is 9.
    fusion = build_model("fusionnet-cifar", initializer="pytorch")
    depthwise = np.asarray(fusion.get_layer("stem_dwsep2_dw").kernel)
    assert np.abs(depthwise).max() <= 1 / 3 and np.std(depthwise) == pytest.approx(1 / 3 / np.sqrt(3), rel=0.15)
    with pytest.raises(ValueError, match="Unknown initializer"):
        build_model("msdnet-tiny", initializer="glorot")


def test_unknown_constructor_arguments_are_refused():
    with pytest.raises(TypeError, match="fusoin"):
        build_model("fusionnet-cifar", fusoin=False)
    with pytest.raises(TypeError, match="transition"):
        build_model("msdnet-tiny", transition="fusionnet")
    with pytest.raises(ValueError, match="Unknown transition"):
        build_model("fusionnet-tiny", transition="densenet")


def test_configs_saved_before_the_new_arguments_load_as_they_were_built():
    # A FusionNet saved before the transition switch read the dropped scale (MSDNet's way).
    new = build_model("fusionnet-cifar", transition="msdnet", initializer="keras")
    legacy_config = {k: v for k, v in new.get_config().items()
                     if k not in ("transition", "initializer", "gradient_equilibrium")}
    assert FusionNet.from_config(legacy_config).get_config() == new.get_config()


def test_get_config_is_complete():
    model = FusionNet(num_classes=4, num_blocks=2, base=1, step=1, n_channels=8, growth_rate=4,
                      stem_channels=8, head_channels=16, fusion=False, stem_stride=1)
    config = model.get_config()
    clone = FusionNet.from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config
    assert exit_macs(clone) == exit_macs(model)
    msd = MSDNet(num_classes=3, num_blocks=2, base=1, step=1, n_channels=8, growth_rate=4, head_channels=16)
    assert "fusion" not in msd.get_config()
    assert MSDNet.from_config(msd.get_config()).get_config() == msd.get_config()


def test_every_preset_is_listed_and_builds():
    names = preset_names()
    for required in ["msdnet-cifar-anytime", "msdnet-cifar-budgeted", "fusionnet-cifar", "ranet-cifar",
                     "fusionnet-tiny", "msdnet-tiny", "ranet-tiny"]:
        assert required in names
    with pytest.raises(ValueError, match="Unknown preset"):
        build_model("resnet-9000")


def _run_summary(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "tf_fusionnet.summary", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_summary_cli_json_and_errors():
    result = _run_summary("msdnet-cifar-budgeted", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["preset"] == "msdnet-cifar-budgeted"
    assert summary["trainable_params"] == 2_020_874
    assert [round(m / 1e6, 3) for m in summary["exit_macs"]] == [6.848, 14.327, 27.502, 41.668, 58.423]
    listing = _run_summary("--list")
    assert listing.returncode == 0 and "fusionnet-tiny" in listing.stdout
    bad = _run_summary("no-such-preset")
    assert bad.returncode != 0 and "Unknown preset" in bad.stderr


@pytest.mark.parametrize("preset, reference, switch, last_exit_mmacs", [
    ("fusionnet-cifar-nofusion", "fusionnet-cifar", {"fusion": False}, 60.12),
    ("fusionnet-cifar-msdnettransition", "fusionnet-cifar", {"transition": "msdnet"}, 64.65),
    ("fusionnet-cifar-msdnetstem", "fusionnet-cifar",
     {"efficient_stem": False, "n_channels": 16, "growth_rate": 6}, 73.16),
    ("msdnet-cifar-fusion", "msdnet-cifar-anytime", {"fusion": True}, 76.96),
])
def test_ablation_presets_change_one_contribution(preset, reference, switch, last_exit_mmacs):
    from tf_fusionnet.models.macs import exit_macs

    model, ref = build_model(preset), build_model(reference)
    config, ref_config = model.get_config(), ref.get_config()
    shared = set(config) & set(ref_config) - {"name"}
    changed = {k: config[k] for k in shared if config[k] != ref_config[k]}
    if reference == "msdnet-cifar-anytime":  # MSDNet has no switches: FusionNet with all off but fusion
        assert config["efficient_stem"] is False and config["head_type"] == "msdnet"
        assert config["transition"] == "msdnet"
        changed["fusion"] = config["fusion"]
    assert changed == switch
    assert exit_macs(model)[-1] / 1e6 == pytest.approx(last_exit_mmacs, abs=0.005)


@pytest.mark.parametrize("preset", ["msdnet-tiny", "ranet-tiny"])
def test_stage_cut_of_some_exits_computes_only_those(preset):
    from tf_fusionnet.models.stage_cut import cut_stages, node_of

    model = build_model(preset)
    last = len(model.outputs) - 1
    kept = [1, last]
    cut = cut_stages(model, kept)
    assert len(cut.nodes) == 2 and cut.output_names[-1] == ["logits"]
    # The heads of the exits left out are in no stage.
    in_stages = {i for nodes in cut.nodes for i in nodes}
    for j in set(range(last + 1)) - set(kept):
        assert id(node_of(model.outputs[j])) not in in_stages
    # Chained, the stages give the kept exits' logits.
    x = np.random.default_rng(0).normal(size=(2,) + tuple(model.inputs[0].shape[1:])).astype("float32")
    full = [np.asarray(o) for o in model(x, training=False)]
    pool = {"image": x}
    for k, (ins, outs) in enumerate(zip(cut.inputs, cut.outputs)):
        feed = [pool[n] for n in cut.input_names[k]]
        result = keras.Model(ins, outs)(feed, training=False)
        result = result if isinstance(result, (list, tuple)) else [result]
        pool.update(zip(cut.output_names[k], (np.asarray(r) for r in result)))
        np.testing.assert_allclose(pool["logits"], full[kept[k]], atol=1e-5)
    every, some = exit_macs(model), exit_macs(model, kept)
    assert exit_macs(model, list(range(last + 1))) == every
    assert some[0] < every[1] and some[1] < every[-1] and some[0] < some[1]
