"""On-device latency of exported bundles: stages, chained cascade, whole model, budgets.

    python benchmarks/cascade_latency.py --bundle bundles/fusionnet --bundle bundles/msdnet \
        [--threads 1,2] [--precision float32,int8] [--images 300]

For every bundle, precision and thread count (batch 1, LiteRT's CPU kernels):
1. each stage's median latency, the chained stages to the last exit, and one whole-model
   TFLite (all exits in one graph, converted here from the bundle's source run) for comparison;
   the runner with early exit off, the whole model (preprocessing included) and the stages'
   interpreters invoked back to back with nothing handed over take turns image by image; their
   means give ``runner_no_exit_over_whole`` and its floor, ``bare_invokes_over_whole``;
2. at every budget of the manifest, the measured mean latency per test image of the
   early-exit cascade (CascadeRunner.classify, one image at a time), beside the latency its
   average MACs predict (the same runner with early exit off, times the MAC share), and the
   share of the MAC saving that shows up as time saved; image by image in turn with the whole
   model and with the bare invokes of the stages each image ran (the floor of the goal's ratio,
   ``bare_invokes_over_whole_times_mac_share``: what the stages cost over their MAC share with
   no runner work);
3. int8 against float32: speed-up and per-exit top-1 (from the bundle's report.json);
4. ``--latency_budget_ms`` and ``--deadline_ms`` at 40%, 60% and 80% of the runner's measured time
   to the last exit: measured mean against the budget, 99th percentile against the deadline, and
   how many late answers came from exit 1 (unavoidable) or after a later stage;
5. server mode (``CascadeRunner.classify_stream``, every stage call at ``--server_batch``):
   images/s over the test images against the whole model at the same batch, with early exit off
   and at every few budgets of the manifest. This machine's speed drifts by tens of percent
   within minutes, so the whole model and each runner setting alternate, ``--server_rounds``
   times, and every ratio is taken within one round.
Writes benchmarks/results/cascade_latency.json.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_fusionnet.console import setup_environment  # noqa: E402  (before TensorFlow loads)

setup_environment()

import json
import time

import numpy as np
from absl import app, flags

flags.DEFINE_multi_string("bundle", None, "Bundle folder(s) written by export/to_tflite.py.")
flags.DEFINE_list("threads", ["1", "2"], "LiteRT thread counts.")
flags.DEFINE_list("precision", ["float32", "int8"], "Precisions to measure (must be in the bundles).")
flags.DEFINE_integer("repeats", 50, "Timed runs per stage (median reported).")
flags.DEFINE_integer("images", 300, "Test images for the budget sweep.")
flags.DEFINE_integer("server_batch", 32, "Batch of the server-mode comparison (0: skip it).")
flags.DEFINE_integer("server_images", 960, "Test images per server-mode pass.")
flags.DEFINE_bool("server_only", False, "Only the server-mode comparison (no batch-1 measurements, goals or plot).")
flags.DEFINE_integer("server_rounds", 5, "Alternating rounds of whole model and server-mode runner.")
flags.DEFINE_string("out", "benchmarks/results/cascade_latency.json", "Result file (and a .png of the budgets beside it).")
flags.DEFINE_list("plot_from", None, "Only plot: result files of earlier runs, one curve each, into --plot_out.")
flags.DEFINE_string("plot_out", None, "PNG written by --plot_from.")
FLAGS = flags.FLAGS

LATENCY_SHARES = (0.4, 0.6, 0.8)  # --latency_budget_ms and --deadline_ms, as shares of the time to the last exit


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


_WHOLE_CACHE: dict = {}


def whole_model_tflite(manifest: dict, precision: str) -> bytes:
    """The bundle's exits in one TFLite graph, from its source run (same calibration data)."""
    from tf_fusionnet.export.cascade_runner import reads_pixels

    key = (manifest["source_run"], tuple(manifest.get("model_exits", ())), precision, reads_pixels(manifest))
    if key not in _WHOLE_CACHE:
        _WHOLE_CACHE[key] = _convert_whole_model(manifest, precision)
    return _WHOLE_CACHE[key]


class WholeModel:
    """The whole model's TFLite graph, called the way the runner calls its stages: a raw
    interpreter, allocated once per batch size, ``set_tensor`` on the image, ``invoke``, and a copy
    of the last exit's logits. (A signature runner re-checks and copies on every call: 0.6-11%
    more per image here, which flattered the runner in this benchmark's runs before 2026-12-01.)"""

    def __init__(self, tflite: bytes, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=tflite, num_threads=threads)
        signature = self.interpreter.get_signature_runner("serve")
        self.input = signature.get_input_details()["image"]["index"]
        outputs = signature.get_output_details()
        self.last_logits = outputs[max(outputs, key=lambda name: int(name.rsplit("_", 1)[1]))]["index"]
        del signature
        self.batch = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.batch != len(x):
            self.interpreter.resize_tensor_input(self.input, x.shape)
            self.interpreter.allocate_tensors()
            self.batch = len(x)
        self.interpreter.set_tensor(self.input, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.last_logits)


def in_turn_with_whole(runner, whole_runner, images: np.ndarray, floor=None) -> tuple[float, float, float, list]:
    """For each image in turn: the whole model (preprocessing included), then ``runner.classify``,
    and with ``floor``, the whole model again and then ``floor(answer)``, so that drifts of this
    machine's speed hit them alike. The runner and the floor each run just after the whole model
    (which leaves the caches holding its own weights, not the stages'); a floor run right after
    the runner found the stages' weights in cache and came out 0.2-0.3 ms per image too fast.
    Returns the whole model's (mean of all its calls), the floor's (0 without it) and the
    runner's mean ms per image, and the runner's answers."""
    whole_times, floor_times, runner_times, results = [], [], [], []

    def whole(img):
        t0 = time.perf_counter()
        whole_runner(whole_model_input(runner, img))
        whole_times.append(time.perf_counter() - t0)

    for img in images:
        whole(img)
        t0 = time.perf_counter()
        results.append(runner.classify(img)[0])
        runner_times.append(time.perf_counter() - t0)
        if floor is not None:
            whole(img)
            t0 = time.perf_counter()
            floor(results[-1])
            floor_times.append(time.perf_counter() - t0)
    mean_ms = lambda times: 1e3 * float(np.mean(times)) if times else 0.0
    return mean_ms(whole_times), mean_ms(floor_times), mean_ms(runner_times), results


def whole_model_input(runner, images: np.ndarray) -> np.ndarray:
    """What the whole model reads: the uint8 pixels where the bundle's stage 1 reads them (the
    whole model then normalises them in its graph too), else the normalised float32 image."""
    return runner.stage_input(images) if runner.reads_pixels else runner.preprocess(images)


def _convert_whole_model(manifest: dict, precision: str) -> bytes:
    from tf_fusionnet.runs.reading import load_checkpoint, load_run, load_run_data
    from tf_fusionnet.export.cascade_runner import reads_pixels
    from tf_fusionnet.export.stages import convert_to_tflite, pixel_input_model, representative_feed

    run = load_run(manifest["source_run"])
    model = load_checkpoint(run, manifest.get("checkpoint", "model"))
    mean = np.array(run.preprocessing["mean"], np.float32)
    std = np.array(run.preprocessing["std"], np.float32)
    pixels = reads_pixels(manifest)
    rep = None
    if precision == "int8":
        data, train_idx, _ = load_run_data(run)
        idx = np.sort(np.random.default_rng(0).choice(train_idx, size=min(200, len(train_idx)), replace=False))
        x = data.train_images[idx] if pixels else (data.train_images[idx].astype(np.float32) - mean) / std
        rep = representative_feed(["image"], [x])
    exits = [e - 1 for e in manifest.get("model_exits", range(1, len(model.outputs) + 1))]
    if len(exits) < len(model.outputs):  # a bundle of some exits: the whole model runs those heads only
        import keras

        model = keras.Model(model.inputs, [model.outputs[e] for e in exits])
    if pixels:
        model = pixel_input_model(model, mean, std)
    names = [f"logits_{k + 1}" for k in range(len(exits))]
    return convert_to_tflite(model, ["image"], names, precision, rep)


def bench_bundle(bundle: str, precision: str, threads: int, test_images: np.ndarray, repeats: int,
                 server_images: np.ndarray) -> dict:
    from tf_fusionnet.export.cascade_runner import CascadeRunner, decode_thresholds

    runner = CascadeRunner(bundle, precision=precision, threads=threads)
    manifest = runner.manifest
    if FLAGS.server_only:
        return {"bundle": bundle, "preset": manifest["preset"], "precision": precision, "threads": threads,
                "server_mode": server_mode(runner, manifest, precision, threads, server_images)}
    x = runner.stage_input(test_images[:1])
    feeds, pool = [], {"image": x}
    for k in range(runner.num_exits):
        feeds.append({name: pool[name] for name in runner.stage_inputs[k]})
        runner._run_stage(k, pool)
    stage_ms = [median_ms(lambda k=k: runner._run_stage(k, dict(feeds[k])), repeats) for k in range(runner.num_exits)]

    def chained():
        runner.run_stages(x)

    chained_ms = median_ms(chained, repeats)
    whole_runner = WholeModel(whole_model_tflite(manifest, precision), threads)
    x_whole = whole_model_input(runner, test_images[:1])
    whole_median_ms = median_ms(lambda: whole_runner(x_whole), repeats)

    full_macs = manifest["exit_macs"][-1]

    def sweep(thresholds=None):
        """Mean ms per image, one image per call; ``thresholds`` None keeps the runner's setting."""
        if thresholds is not None:
            runner.thresholds = decode_thresholds(thresholds)
        t0 = time.perf_counter()
        results = [runner.classify(img)[0] for img in test_images]
        return (time.perf_counter() - t0) * 1e3 / len(test_images), results

    # The same runner with early exit off (every image through every stage, same Python path)
    # against the whole model, image by image in turn, so that drifts of this machine's speed hit
    # both alike. Between them, the stages' interpreters invoked one after another with no
    # tensors handed over: what the split into stages costs inside LiteRT, the runner's floor.
    runner.thresholds = [float("inf")] * runner.num_exits
    runner.classify(test_images[0])  # every stage allocated for one image

    def bare_invokes(answer: dict) -> None:
        """The interpreters of the stages an image ran (to its exit), invoked back to back on the
        inputs they hold, with nothing handed over and no Python between them."""
        for interpreter in runner.interpreters[:answer["exit"]]:
            interpreter.invoke()

    whole_ms, bare_ms, no_exit_ms, _ = in_turn_with_whole(runner, whole_runner, test_images, bare_invokes)
    budgets = []
    for entry in manifest["thresholds"]:
        # Each budget's pass takes turns with the whole model image by image, as above, so the
        # goal's ratio compares times taken in the same seconds.
        runner.thresholds = decode_thresholds(entry["thresholds"])
        budget_whole_ms, budget_bare_ms, mean_ms, results = in_turn_with_whole(runner, whole_runner, test_images,
                                                                               bare_invokes)
        mean_macs = float(np.mean([r["macs"] for r in results]))
        mac_saving = 1 - mean_macs / full_macs
        share = lambda base: ((1 - mean_ms / base) / mac_saving) if mac_saving > 1e-9 else None
        budgets.append({
            "budget_macs": entry["budget_macs"], "mean_macs": mean_macs, "mean_ms": mean_ms,
            "predicted_ms_from_macs": no_exit_ms * mean_macs / full_macs,
            "whole_model_ms": budget_whole_ms,
            # Issue 13's goal: at most 1.10 (the whole model's time times the budget's MAC share).
            "over_whole_times_mac_share": mean_ms / (budget_whole_ms * mean_macs / full_macs),
            # The same for the stages each image ran, invoked bare: what the model's stages cost
            # over their MAC share with no runner work, the floor of the ratio above.
            "bare_invokes_ms": budget_bare_ms,
            "bare_invokes_over_whole_times_mac_share": budget_bare_ms / (budget_whole_ms * mean_macs / full_macs),
            "share_of_mac_saving_realised": share(no_exit_ms),
            "share_of_mac_saving_realised_vs_bare_chain": share(chained_ms),
            "exit_counts": [sum(r["exit"] == k + 1 for r in results) for k in range(runner.num_exits)],
        })
    # --latency_budget_ms and --deadline_ms, as the CLI runs them (one image per call), at shares
    # of the runner's own time to the last exit on this device.
    timings = runner.cascade_timings()
    latency_budgets, deadlines = [], []
    for share in LATENCY_SHARES:
        target = share * timings["exit_ms"][-1]
        try:
            chosen = runner.use_latency_budget(target)
        except Exception:  # below exit 1's cost on this device
            continue
        mean_ms, _ = sweep()  # the runner's latency-budget setting, adjusting itself as it goes
        latency_budgets.append({"budget_ms": target, "expected_ms": chosen["expected_ms"], "measured_mean_ms": mean_ms,
                                "measured_over_budget": mean_ms / target,
                                "final_target_ms": runner._latency["target"] if runner._latency else None})
    runner.thresholds = [float("inf")] * runner.num_exits  # only time stops it
    for share in LATENCY_SHARES:
        deadline = share * timings["exit_ms"][-1]
        results = [runner.classify(img, deadline_ms=deadline)[0] for img in test_images]
        times = [r["ms"] for r in results]
        late = [r for r in results if r["ms"] > 1.1 * deadline]
        # A late answer from exit 1 could not be helped (the first stage always runs); one from a
        # later exit means the runner started a stage its cost estimate said would fit.
        deadlines.append({"deadline_ms": deadline, "p99_ms": float(np.percentile(times, 99)),
                          "p99_over_deadline": float(np.percentile(times, 99)) / deadline,
                          "mean_ms": float(np.mean(times)),
                          "late_at_exit_1": sum(r["exit"] == 1 for r in late),
                          "late_after_a_later_stage": sum(r["exit"] > 1 for r in late)})
    server = server_mode(runner, manifest, precision, threads, server_images) if FLAGS.server_batch else None
    goals = {
        "no_early_exit_within_1.10x_whole": no_exit_ms / whole_ms <= 1.10,
        "budgets_within_1.10x_whole_times_mac_share": sum(b["over_whole_times_mac_share"] <= 1.10 for b in budgets),
        "budgets_bare_invokes_within_1.10x": sum(b["bare_invokes_over_whole_times_mac_share"] <= 1.10 for b in budgets),
        "budgets": len(budgets),
        "latency_budgets_within_10pct": sum(abs(lb["measured_over_budget"] - 1) <= 0.10 for lb in latency_budgets),
        "latency_budget_settings": len(latency_budgets),
        "deadlines_p99_within_1.1x": sum(d["p99_over_deadline"] <= 1.1 for d in deadlines),
        "deadline_settings": len(deadlines),
    }
    return {"goals": goals, "bundle": bundle, "preset": manifest["preset"], "precision": precision, "threads": threads,
            "stage_ms": stage_ms, "chained_ms": chained_ms, "cascade_no_exit_ms": no_exit_ms,
            "runner_no_exit_over_whole": no_exit_ms / whole_ms, "bare_invokes_ms": bare_ms,
            "bare_invokes_over_whole": bare_ms / whole_ms,
            "whole_model_ms": whole_ms, "whole_model_median_ms": whole_median_ms,
            "chained_over_whole": chained_ms / whole_median_ms, "budgets": budgets,
            "cascade_timings": timings, "latency_budgets": latency_budgets, "deadlines": deadlines,
            "server_mode": server}


def server_mode(runner, manifest: dict, precision: str, threads: int, test_images: np.ndarray) -> dict:
    """Images/s of the server-mode cascade against the whole model, both at one batch size,
    alternated within each round (early exit off, then every third budget of the manifest)."""
    from tf_fusionnet.export.cascade_runner import decode_thresholds

    batch = FLAGS.server_batch
    images = test_images[:len(test_images) // batch * batch]
    x = whole_model_input(runner, images)
    whole_runner = WholeModel(whole_model_tflite(manifest, precision), threads)
    whole_runner(x[:batch])  # plans the graph at this batch once, outside the timing
    settings = [("no early exit", [float("inf")] * runner.num_exits, None)] + [
        (f"budget {e['budget_macs'] / 1e6:.1f}M", e["thresholds"], e["budget_macs"]) for e in manifest["thresholds"][::3]]

    def whole_pass() -> float:
        t0 = time.perf_counter()
        for s in range(0, len(x), batch):
            whole_runner(x[s:s + batch])
        return len(x) / (time.perf_counter() - t0)

    def runner_pass(thresholds) -> tuple[float, float]:
        runner.thresholds = decode_thresholds(thresholds)
        macs = 0.0
        t0 = time.perf_counter()
        for _, r in runner.classify_stream((images[s:s + batch] for s in range(0, len(images), batch)), batch):
            macs += r["macs"]
        return len(images) / (time.perf_counter() - t0), macs / len(images)

    runner_pass(settings[0][1])  # the stages' first calls at this batch
    rounds = []
    for _ in range(FLAGS.server_rounds):
        row = {"whole_images_per_s": whole_pass(), "settings": []}
        for name, thresholds, budget in settings:
            rate, mean_macs = runner_pass(thresholds)
            row["settings"].append({"setting": name, "budget_macs": budget, "mean_macs": mean_macs,
                                    "images_per_s": rate, "over_whole": rate / row["whole_images_per_s"]})
        rounds.append(row)
    full_macs = manifest["exit_macs"][-1]
    summary = []
    for i, (name, _, budget) in enumerate(settings):
        ratios = [r["settings"][i]["over_whole"] for r in rounds]
        mean_macs = rounds[-1]["settings"][i]["mean_macs"]
        summary.append({"setting": name, "budget_macs": budget, "mean_macs": mean_macs,
                        "median_over_whole": float(np.median(ratios)),
                        "macs_predict_over_whole": full_macs / mean_macs,
                        "share_of_mac_prediction": float(np.median(ratios)) / (full_macs / mean_macs)})
    return {"batch": batch, "images": len(images), "rounds": rounds, "summary": summary}


def plot_budgets(results: dict[str, list[dict]], path: str) -> None:
    """Mean ms per image against mean MACs at every budget, one panel per preset, precision and
    thread count, one curve per result file; a cross marks the whole model in one TFLite graph."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tf_fusionnet.utils import atomic_path

    keys = sorted({(r["preset"], r["precision"], r["threads"]) for rows in results.values() for r in rows})
    cols = min(4, len(keys))
    nrows = -(-len(keys) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.0 * nrows), dpi=110, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for (label, rows), color in zip(results.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
            for r in (r for r in rows if (r["preset"], r["precision"], r["threads"]) == key):
                points = sorted((b["mean_macs"] / 1e6, b["mean_ms"]) for b in r["budgets"])
                ax.plot(*zip(*points), marker="o", markersize=3, linewidth=1.2, color=color, label=label)
                last = r["budgets"][-1]
                full_macs = last["mean_macs"] * r["cascade_no_exit_ms"] / last["predicted_ms_from_macs"]
                ax.plot([full_macs / 1e6], [r["whole_model_ms"]], marker="x", markersize=7, color=color)
                if "bare_invokes_ms" in last:  # the stages alone, same passes (files from before lack it)
                    bare = sorted((b["mean_macs"] / 1e6, b["bare_invokes_ms"]) for b in r["budgets"])
                    ax.plot(*zip(*bare), linestyle=":", linewidth=1.0, color=color)
                    # Issue 13's goal: 1.10x the whole model's time times the MAC share.
                    ax.plot([0, full_macs / 1e6], [0, 1.1 * r["whole_model_ms"]], linestyle="--", linewidth=0.8,
                            color="grey")
        ax.set_title(f"{key[0]} {key[1]} {key[2]}t", fontsize=8)
        ax.set_xlabel("mean MACs per image (M)", fontsize=7)
        ax.set_ylabel("mean ms per image", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="upper left")
    fig.suptitle("Cascade runner, one image per call: every budget of the manifest (x: whole model; dotted: the "
                 "stages' bare invokes; dashed: 1.1x whole x MAC share)", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main(argv):
    from tf_fusionnet.data.sources import load_dataset
    from tf_fusionnet.export.cascade_runner import load_manifest
    from tf_fusionnet.utils import atomic_write_json, git_commit, library_versions

    if FLAGS.plot_from:
        if not FLAGS.plot_out:
            print("error: --plot_from needs --plot_out", file=sys.stderr)
            return 2
        try:
            results = {os.path.splitext(os.path.basename(p))[0]: json.load(open(p))["results"] for p in FLAGS.plot_from}
        except (OSError, ValueError, KeyError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        plot_budgets(results, FLAGS.plot_out)
        print(f"wrote {FLAGS.plot_out}")
        return 0
    if not FLAGS.bundle:
        print("error: give at least one --bundle", file=sys.stderr)
        return 2
    if FLAGS.server_only and FLAGS.server_batch < 1:
        print("error: --server_only needs --server_batch >= 1", file=sys.stderr)
        return 2
    rows = []
    for bundle in FLAGS.bundle:
        manifest = load_manifest(bundle)
        from tf_fusionnet.runs.reading import load_run

        run = load_run(manifest["source_run"])
        all_test_images = load_dataset(run.config["train"]["dataset"]).test_images
        test_images, server_images = all_test_images[:FLAGS.images], all_test_images[:FLAGS.server_images]
        report = json.load(open(os.path.join(bundle, "report.json")))
        for precision in FLAGS.precision:
            for threads in (int(t) for t in FLAGS.threads):
                r = bench_bundle(bundle, precision, threads, test_images, FLAGS.repeats, server_images)
                r["top1_per_exit"] = report["precisions"][precision]["top1"]
                r["keras_top1_per_exit"] = report["keras_top1"]
                rows.append(r)
                if FLAGS.server_only:
                    for m in r["server_mode"]["summary"]:
                        print(f"{r['preset']:22s} {precision:7s} {threads}t  server mode, batch {FLAGS.server_batch}, "
                              f"{m['setting']}: {m['mean_macs'] / 1e6:.2f}M MACs, {m['median_over_whole']:.2f}x the "
                              f"whole model's images/s (MACs predict {m['macs_predict_over_whole']:.2f}x)", flush=True)
                    continue
                print(f"{r['preset']:22s} {precision:7s} {threads}t  stages "
                      + " ".join(f"{m:.2f}" for m in r["stage_ms"])
                      + f" ms | chained {r['chained_ms']:.2f} ms, whole {r['whole_model_ms']:.2f} ms "
                      f"({r['chained_over_whole']:.2f}x); runner without early exit {r['cascade_no_exit_ms']:.2f} ms "
                      f"({r['runner_no_exit_over_whole']:.2f}x; the stages' bare invokes "
                      f"{r['bare_invokes_over_whole']:.2f}x)", flush=True)
                for lb in r["latency_budgets"]:
                    print(f"    --latency_budget_ms {lb['budget_ms']:.2f}: measured mean {lb['measured_mean_ms']:.2f} ms "
                          f"({lb['measured_over_budget']:.2f}x)", flush=True)
                for d in r["deadlines"]:
                    print(f"    --deadline_ms {d['deadline_ms']:.2f}: p99 {d['p99_ms']:.2f} ms "
                          f"({d['p99_over_deadline']:.2f}x); later than 1.1x: {d['late_at_exit_1']} at exit 1, "
                          f"{d['late_after_a_later_stage']} after a later stage", flush=True)
                for m in (r["server_mode"] or {}).get("summary", []):
                    print(f"    server mode, batch {FLAGS.server_batch}, {m['setting']}: "
                          f"{m['mean_macs'] / 1e6:.2f}M MACs, {m['median_over_whole']:.2f}x the whole model's "
                          f"images/s (MACs predict {m['macs_predict_over_whole']:.2f}x)", flush=True)
                for b in r["budgets"]:
                    share = b["share_of_mac_saving_realised"]
                    print(f"    budget {b['budget_macs'] / 1e6:6.2f}M: {b['mean_macs'] / 1e6:6.2f}M MACs, "
                          f"{b['mean_ms']:.2f} ms/img, {b['over_whole_times_mac_share']:.2f}x the whole model's "
                          f"{b['whole_model_ms']:.2f} ms x MAC share (bare invokes "
                          f"{b['bare_invokes_over_whole_times_mac_share']:.2f}x; MACs predict {b['predicted_ms_from_macs']:.2f} "
                          f"from the runner's own; saving realised {'-' if share is None else f'{100 * share:.0f}%'})",
                          flush=True)
    from tf_fusionnet.utils import machine_info

    if FLAGS.server_only:
        atomic_write_json(FLAGS.out, {"command": "python " + " ".join(sys.argv), "cpu_count": os.cpu_count(),
                                      "machine": machine_info(), "versions": library_versions(),
                                      "git_commit": git_commit(), "results": rows})
        print(f"wrote {FLAGS.out}")
        return 0
    speedups = []
    for r in rows:
        if r["precision"] != "int8":
            continue
        base = next((b for b in rows if b["bundle"] == r["bundle"] and b["threads"] == r["threads"]
                     and b["precision"] == "float32"), None)
        if base:
            speedups.append({"preset": r["preset"], "threads": r["threads"],
                             "int8_speedup_chained": base["chained_ms"] / r["chained_ms"],
                             "max_top1_drop_points": max(100 * (a - b) for a, b in
                                                         zip(base["top1_per_exit"], r["top1_per_exit"]))})
    totals = {key: sum(r["goals"][key] for r in rows) for key in rows[0]["goals"]}
    print(f"goals over {len(rows)} configurations: early exit off within 1.10x the whole model "
          f"{totals['no_early_exit_within_1.10x_whole']} of {len(rows)}; per budget within 1.10x whole x MAC share "
          f"{totals['budgets_within_1.10x_whole_times_mac_share']} of {totals['budgets']} (the stages' bare invokes "
          f"{totals['budgets_bare_invokes_within_1.10x']}); latency budgets within "
          f"10% {totals['latency_budgets_within_10pct']} of {totals['latency_budget_settings']}; deadline p99 within "
          f"1.1x {totals['deadlines_p99_within_1.1x']} of {totals['deadline_settings']}")
    for s in speedups:
        print(f"{s['preset']:22s} int8 vs float32, {s['threads']}t: {s['int8_speedup_chained']:.2f}x faster, "
              f"largest per-exit top-1 drop {s['max_top1_drop_points']:.2f} points")

    atomic_write_json(FLAGS.out, {"command": "python " + " ".join(sys.argv), "cpu_count": os.cpu_count(),
                                  "machine": machine_info(), "versions": library_versions(), "git_commit": git_commit(),
                                  "goals": totals, "results": rows, "int8_vs_float32": speedups})
    plot = os.path.splitext(FLAGS.out)[0] + ".png"
    plot_budgets({os.path.splitext(os.path.basename(FLAGS.out))[0]: rows}, plot)
    print(f"wrote {FLAGS.out} and {plot}")
    return 0


if __name__ == "__main__":
    app.run(main)
