"""The web page's cascade in headless Chromium against the Python runner, on one bundle and machine.

    python benchmarks/web_runtime.py --bundle BUNDLE [--images DIR] [--rounds 3]

BUNDLE is exported with ``--web``. For each precision of its web stages:
1. per-stage latency (batch 1) and the whole chain to the last exit, image by image, in
   Chromium's WebAssembly with LiteRT.js single-threaded and threaded (2 threads; the page
   cross-origin isolated by tf_fusionnet.runtime.serve), against the Python runner
   (ai-edge-litert, 1 and 2 threads) on the bundle's stages of the same precision;
2. the early-exit cascade at the manifest's budgets, in the page (``Cascade.classify``) and in
   the Python runner: mean milliseconds per image and the exits taken (they must be the same
   image by image; counted);
3. a screenshot of the page after classifying one image.
The page and the Python runner take turns, ``--rounds`` times, and each figure is the median
over rounds of that round's median over images (this machine's speed drifts within minutes).
Writes benchmarks/results/web_runtime.json and web_runtime_page.png, with the CPU model and
flags and the browser's and libraries' versions.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_string("bundle", None, "A bundle exported with --web.")
flags.DEFINE_string("images", os.path.join("tf_fusionnet", "data", "cifar10_sample", "test"),
                    "Images (a folder, searched recursively) to time and classify.")
flags.DEFINE_integer("max_images", 200, "At most this many of them.")
flags.DEFINE_integer("rounds", 3, "Alternations of page and Python runner.")
flags.DEFINE_string("out", os.path.join("benchmarks", "results"), "Where the JSON and the screenshot go.")
FLAGS = flags.FLAGS

PAGE_STAGES = """async ([images]) => {
  const cascade = window.tfFusionnet.cascade();
  cascade.setBudget(null);
  const perImage = [];
  for (const pixels of images) {
    const r = await cascade.classify(new Uint8Array(pixels), {all: true});
    perImage.push({stage_ms: r.stage_ms, ms: r.stage_ms.reduce((a, b) => a + b, 0)});
  }
  return perImage;
}"""
PAGE_BUDGET = """async ([images, budget]) => {
  const cascade = window.tfFusionnet.cascade();
  cascade.setBudget(budget);
  const out = [];
  for (const pixels of images) {
    const r = await cascade.classify(new Uint8Array(pixels));
    out.push([r.exit, r.class, r.ms]);
  }
  return out;
}"""


def _python_stage_times(runner, images) -> list[list[float]]:
    """Each stage's milliseconds, image by image, chained as the runner's device mode does."""
    times = []
    for x in images:
        pool = {"image": runner.stage_input(x[None])}
        row = []
        for k in range(runner.num_exits):
            start = time.perf_counter()
            runner._invoke(k, pool)
            logits = runner.interpreters[k].tensor(runner._logits_index[k])()[0]
            runner._answer(k, logits)
            row.append((time.perf_counter() - start) * 1e3)
            del logits
            if k < runner.num_exits - 1:
                runner._hand_on(k, pool, copy=True)
        pool.clear()
        times.append(row)
    return times


def _summary(per_image: list[list[float]]) -> dict:
    a = np.asarray(per_image)
    return {"stage_median_ms": np.median(a, axis=0).round(4).tolist(),
            "chain_median_ms": float(np.median(a.sum(axis=1)).round(4))}


def main(argv):
    from playwright.sync_api import sync_playwright

    from tf_fusionnet.runtime import CascadeRunner
    from tf_fusionnet.runtime.cli import iter_images, read_image
    from tf_fusionnet.runtime.manifest import decode_thresholds, entry_for_budget, load_manifest
    from tf_fusionnet.runtime.serve import make_server
    from tf_fusionnet.utils import machine_info

    if not FLAGS.bundle:
        print("error: --bundle is required", file=sys.stderr)
        return 2
    manifest = load_manifest(FLAGS.bundle)
    if "web" not in manifest:
        print(f"error: {FLAGS.bundle} has no web stages (export it with --web)", file=sys.stderr)
        return 1
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("error: needs Debian's chromium (apt-get install chromium)", file=sys.stderr)
        return 1
    files = sorted(iter_images([FLAGS.images]))[:FLAGS.max_images]
    shape = manifest["input"]["shape"]
    images = np.stack([read_image(f, shape, manifest["input"].get("resize", "center_crop_bilinear"))[0] for f in files])
    as_lists = [x.reshape(-1).tolist() for x in images]
    budgets = sorted(e["budget_macs"] for e in manifest["thresholds"])
    budgets = [budgets[i] for i in sorted({0, len(budgets) // 3, 2 * len(budgets) // 3, len(budgets) - 1})] if budgets else []

    server = make_server(FLAGS.bundle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    results = {"bundle": os.path.abspath(FLAGS.bundle), "preset": manifest.get("preset"), "images": len(files),
               "image_folder": FLAGS.images, "rounds": FLAGS.rounds, "exit_macs": manifest["exit_macs"],
               "machine": machine_info(),
               "chromium": subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip(),
               "litertjs": manifest["web"].get("litertjs"), "precisions": {}}
    try:
        import ai_edge_litert

        results["ai_edge_litert"] = getattr(ai_edge_litert, "__version__", None)
    except ImportError:
        pass
    os.makedirs(FLAGS.out, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        results["chromium_playwright"] = browser.version
        for precision in manifest["web"]["precisions"]:
            pages = {}
            for build, threads in (("wasm_1_thread", "0"), ("wasm_threaded", "1")):
                page = browser.new_page()
                page.goto(f"{server.page_url}?precision={precision}&threads={threads}&budget=none")
                page.wait_for_function("window.tfFusionnet && window.tfFusionnet.ready", timeout=120_000)
                if page.evaluate("window.tfFusionnet.error"):
                    raise SystemExit(f"error: the page refused the bundle: {page.evaluate('window.tfFusionnet.error')}")
                pages[build] = page
                results.setdefault("page_runtime", {})[build] = page.text_content("#runtime")
            runners = {f"python_{t}_thread{'s' if t > 1 else ''}": CascadeRunner(FLAGS.bundle, precision, threads=t)
                       for t in (1, 2)}
            rounds = {name: [] for name in list(pages) + list(runners)}
            budget_rounds = {b: {name: [] for name in list(pages) + list(runners)} for b in budgets}
            agree = {b: {} for b in budgets}
            for _ in range(FLAGS.rounds):
                for build, page in pages.items():
                    page.evaluate(PAGE_STAGES, [as_lists[:5]])  # warm-up
                    rounds[build].append([r["stage_ms"] for r in page.evaluate(PAGE_STAGES, [as_lists])])
                for name, runner in runners.items():
                    _python_stage_times(runner, images[:5])
                    rounds[name].append(_python_stage_times(runner, images))
                for budget in budgets:
                    answers = {}
                    for build, page in pages.items():
                        out = page.evaluate(PAGE_BUDGET, [as_lists, budget])
                        answers[build] = [(e, c) for e, c, _ in out]
                        budget_rounds[budget][build].append(float(np.mean([ms for _, _, ms in out])))
                    for name, runner in runners.items():
                        runner.thresholds = decode_thresholds(entry_for_budget(manifest, budget)["thresholds"])
                        out = [runner.classify(x)[0] for x in images]
                        answers[name] = [(r["exit"], r["class"]) for r in out]
                        budget_rounds[budget][name].append(float(np.mean([r["ms"] for r in out])))
                    reference = answers["python_1_thread"]
                    agree[budget] = {name: int(sum(a == b for a, b in zip(ans, reference))) for name, ans in answers.items()}
            entry = {}
            for name, per_round in rounds.items():
                summaries = [_summary(r) for r in per_round]
                entry[name] = {
                    "stage_median_ms": np.median([s["stage_median_ms"] for s in summaries], axis=0).round(4).tolist(),
                    "chain_median_ms": float(np.median([s["chain_median_ms"] for s in summaries]).round(4)),
                    "chain_median_ms_per_round": [s["chain_median_ms"] for s in summaries],
                }
            entry["budgets"] = []
            for budget in budgets:
                reference = runners["python_1_thread"]
                reference.thresholds = decode_thresholds(entry_for_budget(manifest, budget)["thresholds"])
                outs = [reference.classify(x)[0]["exit"] for x in images]
                entry["budgets"].append({
                    "budget_macs": budget,
                    "mean_macs": float(np.mean([manifest["exit_macs"][e - 1] for e in outs])),
                    "exit_counts": np.bincount(outs, minlength=manifest["num_exits"] + 1)[1:].tolist(),
                    "mean_ms": {name: float(np.median(v)) for name, v in budget_rounds[budget].items()},
                    "same_exit_and_class_as_python_1_thread": agree[budget],
                })
            results["precisions"][precision] = entry
            line = ", ".join(f"{name} {v['chain_median_ms']:.2f}" for name, v in entry.items() if name != "budgets")
            print(f"{precision}: whole chain, median ms per image: {line}", flush=True)
        page = pages["wasm_threaded"]  # the screenshot: a middle budget, chosen as a person would
        page.select_option("#budget", index=len(manifest["thresholds"]) // 2)
        page.set_input_files("#file", files[0])
        page.wait_for_selector("#result:not([hidden])")
        page.screenshot(path=os.path.join(FLAGS.out, "web_runtime_page.png"), full_page=True)
        browser.close()
    server.shutdown()
    with open(os.path.join(FLAGS.out, "web_runtime.json"), "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(f"wrote {os.path.join(FLAGS.out, 'web_runtime.json')}")
    return 0


if __name__ == "__main__":
    app.run(main)
