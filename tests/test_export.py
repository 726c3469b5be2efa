import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bundle(tiny_run, tiny_bundle):
    return {"run": tiny_run, "bundle": tiny_bundle}


def _runner_module(bundle_dir):
    sys.path.insert(0, bundle_dir)
    try:
        import importlib

        import cascade_runner

        return importlib.reload(cascade_runner)
    finally:
        sys.path.remove(bundle_dir)


def test_bundle_layout_manifest_and_report(bundle):
    b = bundle["bundle"]
    manifest = json.load(open(os.path.join(b, "manifest.json")))
    assert manifest["format_version"] == 4 and manifest["num_exits"] == 3
    assert manifest["input"]["stage_1_reads"] == "pixels"  # normalised in stage 1's graph; checked below
    assert [manifest["precisions"][p]["stage_io_dtype"] for p in ("float32", "float16", "int8")] == [
        "float32", "float32", "int8"]
    # Strict JSON that any phone's parser reads: no NaN/Infinity anywhere, and a digest sidecar.
    raw = open(os.path.join(b, "manifest.json"), "rb").read()
    json.loads(raw, parse_constant=lambda name: pytest.fail(f"{name} in manifest.json"))
    json.loads(open(os.path.join(b, "report.json")).read(), parse_constant=lambda name: pytest.fail(name))
    import hashlib

    assert open(os.path.join(b, "manifest.sha256")).read() == f"{hashlib.sha256(raw).hexdigest()}  manifest.json\n"
    for entry in manifest["thresholds"]:
        assert entry["thresholds"][-1] == 0.0  # the last exit always answers
        assert all(t is None or 0.0 <= t <= 1.0 for t in entry["thresholds"])
    assert manifest["input"]["shape"] == [32, 32, 3] and len(manifest["normalization"]["mean"]) == 3
    assert manifest["class_names"][0] == "airplane"
    assert manifest["precisions"]["float32"]["stages"] == [f"float32/stage_{k}.tflite" for k in (1, 2, 3)]
    assert manifest["precisions"]["int8"]["standalone"] == [f"int8/exit_{k}.tflite" for k in (1, 2, 3)]
    assert manifest["stages"][0]["inputs"] == ["image"]
    assert manifest["stages"][1]["inputs"] == manifest["stages"][0]["outputs"][1:]  # hand-off by name
    assert manifest["stages"][-1]["outputs"] == ["logits"]
    assert manifest["exit_macs"] == sorted(manifest["exit_macs"])
    assert len(manifest["thresholds"]) >= 3
    for name, digest in manifest["sha256"].items():
        assert os.path.exists(os.path.join(b, name)) and len(digest) == 64
    assert os.path.exists(os.path.join(b, "cascade_runner.py")) and "tf_fusionnet_runtime/portable.py" in manifest["sha256"]
    report = json.load(open(os.path.join(b, "report.json")))
    f32 = report["precisions"]["float32"]
    assert f32["within_1e-4"] and max(f32["max_abs_logit_diff_vs_keras"]) <= 1e-4
    assert f32["top1"] == pytest.approx(report["keras_top1"])
    assert max(f32["standalone_max_abs_diff_vs_chained"]) <= 1e-4
    assert len(report["precisions"]["int8"]["top1"]) == 3
    assert max(report["precisions"]["float16"]["max_abs_logit_diff_vs_keras"]) < 0.1
    assert not [f for f in os.listdir(os.path.dirname(b)) if f.startswith(".tmp-")]


def test_bundle_of_some_exits_skips_the_others_heads(bundle, tmp_path):
    from tf_fusionnet.export.bundle import export_bundle

    out = str(tmp_path / "exits_1_3")
    report = export_bundle(bundle["run"], out, precisions=("float32",), report_images=60, verbose=False, exits=(1, 3))
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    full = json.load(open(os.path.join(bundle["bundle"], "manifest.json")))
    assert manifest["num_exits"] == 2 and manifest["model_exits"] == [1, 3] and full["model_exits"] == [1, 2, 3]
    assert manifest["precisions"]["float32"]["stages"] == ["float32/stage_1.tflite", "float32/stage_2.tflite"]
    # Exit 2's head is not run, so the last exit costs less than in the bundle of every exit.
    assert manifest["exit_macs"][0] == full["exit_macs"][0]
    assert manifest["exit_macs"][1] < full["exit_macs"][2]
    assert all(len(e["thresholds"]) == 2 and e["thresholds"][-1] == 0.0 for e in manifest["thresholds"])
    # The bundle's exit 2 is the model's exit 3, logit for logit.
    f32 = report["precisions"]["float32"]
    assert f32["within_1e-4"]
    runner = _runner_module(out).CascadeRunner(out, thresholds=[2.0, 0.0])
    assert runner.model_exits == [1, 3]
    from tf_fusionnet.data.sources import load_dataset

    images = load_dataset("sample").test_images[:5]
    full_runner = _runner_module(bundle["bundle"]).CascadeRunner(bundle["bundle"], thresholds=[2.0, 2.0, 0.0])
    assert [r["class"] for r in runner.classify(images)] == [r["class"] for r in full_runner.classify(images)]


def test_int8_stages_hand_int8_maps_on_and_answer_as_float_boundaries_do(bundle, tmp_path):
    """int8 boundaries only skip a dequantise-quantise round trip that gives back the same int8
    values, so the chain's logits are those of the same stages with float32 inputs and outputs."""
    from tf_fusionnet.data.sources import load_dataset
    from tf_fusionnet.export.bundle import export_bundle

    out = str(tmp_path / "float_boundaries")
    export_bundle(bundle["run"], out, precisions=("int8",), report_images=20, verbose=False, int8_boundaries=False)
    old_style = _runner_module(out).CascadeRunner(out, precision="int8")
    assert json.load(open(os.path.join(out, "manifest.json")))["precisions"]["int8"]["stage_io_dtype"] == "float32"
    runner = _runner_module(bundle["bundle"]).CascadeRunner(bundle["bundle"], precision="int8")
    for k in range(3):
        assert all(q is None for q in old_style.stage_input_quantization[k].values())
        assert all(q is not None for n, q in runner.stage_input_quantization[k].items() if (k, n) != (0, "image"))
        assert all(q is not None for q in runner.stage_output_quantization[k].values())
    # Every boundary is handed on as it is: a stage's output and its reader's input agree.
    assert runner._conversions == [{}, {}, {}]
    images = load_dataset("sample").test_images[:40]
    # Stage 1 reads the pixels as they are (both bundles).
    assert runner.stage_input(images) is images and runner.stage_input_quantization[0]["image"] is None
    expected = old_style.all_exit_logits(images)
    got = runner.all_exit_logits(images)
    steps = np.asarray([q["logits"][0] for q in runner.stage_output_quantization])[:, None, None]
    assert got.dtype == np.float32 and np.max(np.abs(got - expected) / steps) <= 1.0 + 1e-3
    assert (got.argmax(2) == expected.argmax(2)).mean() >= 0.95
    with pytest.raises(Exception, match="reads uint8 pixels") as refused:
        runner.run_stages(runner.preprocess(images))
    assert type(refused.value).__name__ == "BundleError"


def test_stage_1_reading_pixels_answers_as_a_normalised_input_does(bundle, tmp_path):
    """The bundle's stage 1 normalises the uint8 pixels in its graph; a bundle exported with
    pixels_in=False reads the image the runner normalises (and, for int8, quantises through its
    lookup table). float32 logits agree to rounding, int8 ones to its quantisation."""
    from tf_fusionnet.data.sources import load_dataset
    from tf_fusionnet.export.bundle import export_bundle
    from tf_fusionnet.export.cascade_runner import quantize

    out = str(tmp_path / "normalized")
    export_bundle(bundle["run"], out, precisions=("float32", "int8"), report_images=20, verbose=False,
                  pixels_in=False)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["format_version"] == 4 and manifest["input"]["stage_1_reads"] == "normalized"
    images = load_dataset("sample").test_images[:40]
    module = _runner_module(out)
    for precision in ("float32", "int8"):
        normalized = module.CascadeRunner(out, precision=precision)
        pixels = module.CascadeRunner(bundle["bundle"], precision=precision)
        assert not normalized.reads_pixels and pixels.reads_pixels
        x = normalized.stage_input(images)
        expected = normalized.preprocess(images)
        if precision == "int8":  # the lookup table gives what quantising the normalised floats gives
            assert x.dtype == np.int8
            expected = quantize(expected, *normalized.stage_input_quantization[0]["image"])
        np.testing.assert_array_equal(x, expected)  # bit for bit: the same float32 operations
        got, want = pixels.all_exit_logits(images), normalized.all_exit_logits(images)
        if precision == "float32":
            np.testing.assert_allclose(got, want, atol=1e-4)
        else:
            assert (got.argmax(2) == want.argmax(2)).mean() >= 0.9
            assert np.abs(got - want).max() < 0.25 * np.abs(want).max()
        # Normalised floats still go into run_stages where stage 1 reads them.
        np.testing.assert_array_equal(np.stack(normalized.run_stages(normalized.preprocess(images))), want)


def test_quantisation_helpers_follow_tflite():
    from tf_fusionnet.export import cascade_runner as cr

    x = np.asarray([-3.0, -0.25, -0.15, 0.0, 0.05, 0.15, 0.25, 1.0, 30.0], np.float32)
    # scale 0.1, zero point 3: x / 0.1 rounded half away from zero, + 3, clamped to int8.
    np.testing.assert_array_equal(cr.quantize(x, 0.1, 3), [-27, 0, 1, 3, 4, 5, 6, 13, 127])
    q = np.arange(-128, 128, dtype=np.int8)
    np.testing.assert_allclose(cr.dequantize(q, 0.5, -10), (q.astype(np.float32) + 10) * 0.5)
    # Scales that agree to float32 rounding read as one; a real difference does not.
    assert cr.same_quantization((0.0032295426, -128), (0.0032295417, -128))
    assert not cr.same_quantization((0.0032, -128), (0.0033, -128))
    assert not cr.same_quantization((0.0032, -128), (0.0032, -127))
    assert not cr.same_quantization(None, (0.1, 0)) and cr.same_quantization(None, None)
    # A tensor written with one quantisation and read with another is converted through floats.
    requantize = cr._converter((0.1, 0), (0.2, 5))
    np.testing.assert_array_equal(requantize(np.asarray([10, -10, 127], np.int8)), [10, 0, 69])
    np.testing.assert_array_equal(cr._converter(None, (0.1, 0))(np.float32([0.26])), [3])
    np.testing.assert_allclose(cr._converter((0.1, 0), None)(np.int8([3])), [0.3], rtol=1e-6)


def test_one_image_answers_as_the_batch_path_does(bundle):
    """One image's answer comes from a Python list (a few classes) or numpy (many); both give the
    batch path's class, the first of tied top logits, and its confidence to rounding."""
    from tf_fusionnet.data.sources import load_dataset
    from tf_fusionnet.export import cascade_runner as cr

    rng = np.random.default_rng(0)
    for classes in (3, 10, cr.PYTHON_TOP_MAX_CLASSES, 100):
        for _ in range(20):
            z = rng.normal(scale=4.0, size=classes).astype(np.float32)
            z[rng.integers(classes)] = z.max()  # a tie for the top: the first one answers
            answer, confidence = cr._top_class_and_confidence(z.tolist())
            assert answer == int(np.argmax(z))
            assert confidence == pytest.approx(float(cr.softmax(z).max()), rel=1e-14)
    images = load_dataset("sample").test_images[:12]
    for precision in ("float32", "int8"):
        runner = _runner_module(bundle["bundle"]).CascadeRunner(bundle["bundle"], precision=precision)
        assert runner._python_top  # 10 classes
        # Stage calls of one image, as classify makes them (a batch may round differently).
        logits = np.stack([np.stack(runner.run_stages(runner.stage_input(img)))[:, 0] for img in images], axis=1)
        for python_top in (True, False):
            runner._python_top = python_top
            for k in range(runner.num_exits):
                runner.thresholds = [0.0 if j == k else 2.0 for j in range(runner.num_exits)]
                one = [runner.classify(img)[0] for img in images]
                assert [r["exit"] for r in one] == [k + 1] * len(images)
                assert [r["class"] for r in one] == logits[k].argmax(1).tolist()
                np.testing.assert_allclose([r["confidence"] for r in one], cr.softmax(logits[k]).max(1), rtol=1e-12)


def test_cascade_makes_the_same_decisions_as_the_simulation(bundle):
    from tf_fusionnet.data.sources import load_dataset
    from tf_fusionnet.exits import exit_indices, exit_proportions, fit_thresholds
    from tf_fusionnet.evaluation.metrics import softmax
    from tf_fusionnet.runs.reading import load_run, run_logits

    logits = run_logits(load_run(bundle["run"]), verbose=0)
    val_probs, test_probs = softmax(logits["val_logits"]), softmax(logits["test_logits"])
    test_images = load_dataset("sample").test_images
    runner_module = _runner_module(bundle["bundle"])
    for q in (0.3, 1.0, 2.5):
        thresholds = fit_thresholds(val_probs.max(2), exit_proportions(q, 3))
        expected_exit = exit_indices(test_probs.max(2), thresholds)
        expected_class = test_probs.argmax(2)[expected_exit, np.arange(len(expected_exit))]
        runner = runner_module.CascadeRunner(bundle["bundle"], thresholds=thresholds)
        results = runner.classify(test_images)  # one batch
        # TFLite's float32 logits differ from Keras's by ~1e-7, so an image whose confidence lies
        # that close to a threshold may go either way; the 1-epoch tiny model's confidences crowd
        # around 0.1, where that happens. Those images are left out; most must remain.
        finite = np.asarray([t if np.isfinite(t) else np.nan for t in thresholds[:-1]])
        margin = np.abs(test_probs.max(2)[:-1] - finite[:, None])
        clear = ~np.any(np.nan_to_num(margin, nan=1.0) < 1e-5, axis=0)
        assert clear.mean() > 0.5
        assert [r["exit"] - 1 for r, c in zip(results, clear) if c] == expected_exit[clear].tolist()
        assert [r["class"] for r, c in zip(results, clear) if c] == expected_class[clear].tolist()
        one_by_one = [runner.classify(img)[0] for img in test_images[:20]]
        assert [r["exit"] - 1 for r, c in zip(one_by_one, clear[:20]) if c] == expected_exit[:20][clear[:20]].tolist()
        # Server mode: uneven input batches, stage calls of 8, answers out of order by index.
        streamed = list(runner.classify_stream([test_images[:13], test_images[13:14], test_images[14:50]], 8))
        assert sorted(i for i, _ in streamed) == list(range(50))
        by_index = dict(streamed)
        assert [(by_index[i]["exit"], by_index[i]["class"]) for i in range(50) if clear[i]] == [
            (r["exit"], r["class"]) for r, c in zip(results[:50], clear[:50]) if c]
        assert all(r["ms"] >= 0 for r in by_index.values())


def test_a_stage_that_fails_mid_image_leaves_the_runner_usable(bundle):
    """One image's stage outputs are views of LiteRT's buffers; LiteRT refuses to run a stage while
    a view of it is alive, so a failure between stages must not leave one behind."""
    from tf_fusionnet.data.sources import load_dataset

    images = load_dataset("sample").test_images[:4]
    runner = _runner_module(bundle["bundle"]).CascadeRunner(bundle["bundle"], thresholds=[2.0, 2.0, 0.0])
    before = [runner.classify(img)[0] for img in images]
    stage_2 = runner.interpreters[1]
    real_invoke = stage_2.invoke

    def fail_once():
        stage_2.invoke = real_invoke
        raise RuntimeError("stage 2 failed")

    stage_2.invoke = fail_once
    with pytest.raises(RuntimeError, match="stage 2 failed") as failure:
        runner.classify(images[0])
    after = [runner.classify(img)[0] for img in images]  # the traceback (and its frames) still alive
    assert failure.tb is not None
    assert [(r["exit"], r["class"], r["confidence"]) for r in after] == [
        (r["exit"], r["class"], r["confidence"]) for r in before]
    # Single images, a batch (stage calls of 4) and single images again: each size change re-plans.
    batch = runner.classify(images)
    assert [(r["exit"], r["class"]) for r in batch] == [(r["exit"], r["class"]) for r in before]
    assert runner.classify(images[1])[0]["class"] == before[1]["class"]


def _run_cli(bundle_dir, *args):
    return subprocess.run([sys.executable, os.path.join(bundle_dir, "cascade_runner.py"), *args],
                          capture_output=True, text=True, timeout=300)


def test_runner_cli_needs_no_tensorflow(bundle, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    sample = os.path.join(ROOT, "tf_fusionnet", "data", "cifar10_sample", "test", "cat")
    for name in sorted(os.listdir(sample))[:5]:
        shutil.copy(os.path.join(sample, name), images / name)
    result = _run_cli(bundle["bundle"], str(images), "--json", "--budget", "1e9")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[-1]["summary"]["images"] == 5  # the last line sums up
    rows = rows[:-1]
    assert len(rows) == 5
    for row in rows:
        assert {"file", "class", "exit", "confidence", "ms"} <= set(row) and 1 <= row["exit"] <= 3
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import numpy as np, cascade_runner as cr;"
        "r = cr.CascadeRunner(sys.argv[1], precision='int8', threads=2);"
        "out = r.classify(np.zeros((4, 32, 32, 3), np.uint8));"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'));"
        "print(len(out), bad)"
    )
    check = subprocess.run([sys.executable, "-c", probe, bundle["bundle"]], capture_output=True, text=True,
                           timeout=300, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "4 []"
    served = _run_cli(bundle["bundle"], str(images), "--json", "--budget", "1e9", "--batch_size", "2")
    assert served.returncode == 0, served.stderr
    served_rows = sorted((json.loads(line) for line in served.stdout.splitlines()[:-1]), key=lambda r: r["file"])
    assert [(r["file"], r["exit"], r["class"]) for r in served_rows] == [
        (r["file"], r["exit"], r["class"]) for r in sorted(rows, key=lambda r: r["file"])]
    human = _run_cli(bundle["bundle"], str(images), "--deadline_ms", "1000")
    assert human.returncode == 0 and "5 images" in human.stdout


def test_runner_refuses_bad_input(bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundle["bundle"], broken)
    with open(broken / "float32" / "stage_2.tflite", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    img = tmp_path / "ok.png"
    Image.new("RGB", (32, 32)).save(img)
    corrupt = _run_cli(str(broken), str(img))
    assert corrupt.returncode == 1 and "sha256 does not match" in corrupt.stderr
    assert len(corrupt.stderr.strip().splitlines()) == 1

    os.remove(broken / "float32" / "stage_2.tflite")
    missing = _run_cli(str(broken), str(img))
    assert missing.returncode == 1 and "missing" in missing.stderr

    small = tmp_path / "small.png"
    Image.new("RGB", (16, 16)).save(small)
    fitted = _run_cli(bundle["bundle"], str(small))  # any size: fitted to the input, and said so
    assert fitted.returncode == 0 and "1 fitted to the input size" in fitted.stdout
    gray = tmp_path / "gray.png"
    Image.new("L", (32, 32)).save(gray)
    converted = _run_cli(bundle["bundle"], str(gray))  # training's rule: grey -> RGB, and said so
    assert converted.returncode == 0 and "1 converted to 3 channel(s)" in converted.stdout
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    unreadable = _run_cli(bundle["bundle"], str(junk))
    assert unreadable.returncode == 1 and "not a readable image" in unreadable.stderr
    flag = _run_cli(bundle["bundle"], str(img), "--frobnicate")
    assert flag.returncode == 1 and flag.stderr.startswith("error:")


def test_latency_budget_picks_affordable_thresholds(bundle, tmp_path):
    runner_module = _runner_module(bundle["bundle"])
    runner = runner_module.CascadeRunner(bundle["bundle"])
    cache = str(tmp_path / "latency.json")
    chosen = runner.use_latency_budget(1e6, cache=cache)
    assert os.path.exists(cache) and len(chosen["exit_ms"]) == 3
    # Measured, not made up. (Whether exit 3 costs more than exit 1 is not asserted: the tiny
    # model's stages take microseconds, and a 30-call mean on a busy 2-core machine can invert.)
    assert all(ms > 0 for ms in chosen["exit_ms"])
    # An ample budget picks the manifest entry with the largest expected latency.
    expected = [float(np.dot(e["val_exit_shares"], chosen["exit_ms"])) for e in runner.manifest["thresholds"]]
    assert chosen["expected_ms"] == pytest.approx(max(expected))
    with pytest.raises(runner_module.BundleError):
        runner.use_latency_budget(0.0, cache=cache)
    # A second runner reads the same device's measurement from the cache instead of measuring.
    again = runner_module.CascadeRunner(bundle["bundle"])
    assert again.cascade_timings(cache=cache) == runner.cascade_timings()


def test_latency_budget_mixes_the_entries_around_the_budget(bundle):
    runner_module = _runner_module(bundle["bundle"])
    runner = runner_module.CascadeRunner(bundle["bundle"])
    runner._timings = {"exit_ms": [1.0, 2.0, 4.0], "stage_cost_ms": [1.0, 1.0, 2.0]}
    expected = sorted(float(np.dot(e["val_exit_shares"], [1.0, 2.0, 4.0])) for e in runner.manifest["thresholds"])
    gaps = [(b - a, a, b) for a, b in zip(expected, expected[1:]) if b - a > 1e-6]
    _, low, high = max(gaps)
    budget = low + 0.3 * (high - low)
    chosen = runner.use_latency_budget(budget)
    assert chosen["expected_ms"] == pytest.approx(budget) and chosen["upper_share"] == pytest.approx(0.3)
    # The mixture's two entries, made extreme so that each image shows which it used: exit 1 or 3.
    runner._mix, runner._mix_credit, runner._latency = ([float("inf"), float("inf"), float("-inf")], 0.25), 0.0, None
    runner._thresholds = [float("-inf")] * 3
    images = np.zeros((20, 32, 32, 3), np.uint8)
    one_by_one = [runner.classify(images[i])[0]["exit"] for i in range(20)]
    batched = [r["exit"] for r in runner.classify(images)]
    for exits in (one_by_one, batched):
        assert exits == [1, 1, 1, 3] * 5
    runner.thresholds = [float("-inf")] * 3  # explicit thresholds end the mixture
    assert [r["exit"] for r in runner.classify(images)] == [1] * 20
    # At or above the dearest entry there is nothing to mix with.
    assert runner.use_latency_budget(1e6)["upper_budget_macs"] is None
    # The target follows the measured times: images slower than the budget pull it down to the
    # cheapest entry at most, faster ones up to the dearest, and on-budget images leave it.
    runner.use_latency_budget(budget)
    for _ in range(200):
        runner._latency_feedback(10 * budget)
    assert runner._latency["target"] == pytest.approx(expected[0]) and runner._mix is None
    for _ in range(2000):
        runner._latency_feedback(0.0)
    assert runner._latency["target"] == pytest.approx(expected[-1])
    runner.use_latency_budget(budget)
    runner._latency_feedback(budget)
    assert runner._latency["target"] == pytest.approx(budget) and runner._mix[1] == pytest.approx(0.3)


def test_deadline_never_starts_a_stage_that_cannot_finish(bundle):
    runner_module = _runner_module(bundle["bundle"])
    runner = runner_module.CascadeRunner(bundle["bundle"])  # early exit off: only time stops it
    image = np.zeros((1, 32, 32, 3), np.uint8)
    runner._timings = {"exit_ms": [1.0, 2.0, 3.0], "stage_cost_ms": [1.0, 1e6, 1e6]}
    answer = runner.classify(image, deadline_ms=50.0)[0]
    assert answer["exit"] == 1 and answer["deadline_hit"]  # stage 2 would take longer than the deadline
    runner._timings, runner._stage_cost = {"exit_ms": [1.0, 2.0, 3.0], "stage_cost_ms": [0.0, 0.0, 0.0]}, None
    answer = runner.classify(image, deadline_ms=1e6)[0]
    assert answer["exit"] == 3 and not answer["deadline_hit"]
    # Every stage run under a deadline updates its cost: none of them is free any more.
    assert all(cost > 0 for cost in runner._stage_cost)
    assert runner.classify(np.zeros((0, 32, 32, 3), np.uint8)) == []
