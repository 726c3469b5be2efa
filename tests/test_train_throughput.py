"""The parts of benchmarks/train_throughput.py that its committed tables rest on (issue 49)."""

import keras
import pytest

from conftest import load_benchmark_script


@pytest.fixture(scope="module")
def throughput():
    return load_benchmark_script("train_throughput")


def test_conv_linear_macs_count_convs_without_bias_and_dense_with_it(throughput):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False)(x)  # 4x4 out
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(5)(x))
    # conv 3*4*9 per pixel on 8x8; depthwise 4*9 per pixel on 4x4; dense 4*5 + 5 bias;
    # ReLU and pooling are not conv or linear work (the PyTorch hook does not see them either).
    assert throughput.conv_linear_macs_of(model) == 3 * 4 * 9 * 64 + 4 * 9 * 16 + 4 * 5 + 5


def test_profile_table_finds_every_conv_of_the_step(throughput):
    from tf_fusionnet.presets import build_model

    result = throughput.measure("msdnet-tiny", "float32", batch_size=8, warmup=1, steps=1, profile_steps=1)
    ops = result["profile"]["ops"]

    def plain(op):
        return op.replace("_MklNative", "").replace("_Mkl", "")

    convs = sum(isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D)
                for layer in build_model("msdnet-tiny")._flatten_layers(include_self=False))
    forward = sum(r["ops_per_step"] for r in ops if r["phase"] == "forward" and plain(r["op"]) == "Conv2D")
    filter_grads = sum(r["ops_per_step"] for r in ops
                       if r["phase"] == "backward" and plain(r["op"]) == "Conv2DBackpropFilter")
    assert forward == convs and filter_grads == convs
    conv_rows = [r for r in ops if plain(r["op"]) in ("Conv2D", "Conv2DBackpropFilter", "Conv2DBackpropInput")]
    assert conv_rows and all(r["gmacs_per_second"] > 0 for r in conv_rows)
    assert result["profile"]["op_ms_per_step"] > 0 and result["images_per_second"] > 0
