"""The bundle's web page (export --web) in a real headless Chromium, against the Python runner.

Needs Debian's chromium, Python's playwright and LiteRT.js in tf_fusionnet/runtime/web/node_modules
(`.ci/run` installs all three and sets TF_FUSIONNET_REQUIRE_BROWSER=1, so there a missing piece
fails instead of skipping).
"""

import functools
import glob
import hashlib
import http.server
import json
import os
import shutil
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_TEST = os.path.join(ROOT, "tf_fusionnet", "data", "cifar10_sample", "test")


def _browser_or_skip() -> str:
    """Chromium's path; skips (or fails under TF_FUSIONNET_REQUIRE_BROWSER=1) when a piece is missing."""
    from tf_fusionnet.export.web import find_litertjs

    missing = []
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        missing.append("chromium (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -r requirements.txt)")
    try:
        find_litertjs()
    except ValueError as error:
        missing.append(str(error))
    if missing:
        message = "the web runtime's browser test needs " + "; ".join(missing)
        if os.environ.get("TF_FUSIONNET_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return chromium


@pytest.fixture(scope="module")
def chromium():
    return _browser_or_skip()


@pytest.fixture(scope="module")
def web_bundle(tmp_path_factory, tiny_run, chromium):
    """The tiny run exported with --web (float32 and int8); read-only, copied by a case that changes it."""
    from tf_fusionnet.export.bundle import export_bundle

    out = str(tmp_path_factory.mktemp("web") / "bundle")
    export_bundle(tiny_run, out, precisions=("float32", "int8"), verbose=False, web=True)
    return out


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


class Serving:
    """A server of a bundle on a free localhost port, in a thread, for one case."""

    def __init__(self, server):
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://localhost:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _serve(bundle, isolate=True):
    from tf_fusionnet.runtime.serve import make_server

    return Serving(make_server(bundle, isolate=isolate))


def _plain_static_server(folder):
    """The stdlib's static server: what "any static server" gives (no checks, no isolation headers)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    return Serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=folder)))


def _open(browser, url):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_function("window.tfFusionnet && window.tfFusionnet.ready", timeout=60_000)
    assert not errors, errors
    return page


CLASSIFY_ALL = """async ([files, budget]) => {
  const t = window.tfFusionnet;
  t.cascade().setBudget(budget);
  const out = [];
  for (const bytes of files) {
    const r = await t.classifyBlob(new Blob([new Uint8Array(bytes)]));
    out.push([r.class, r.exit, r.confidence]);
  }
  return out;
}"""


def _python_answers(bundle, precision, budget, files):
    from tf_fusionnet.runtime import CascadeRunner
    from tf_fusionnet.runtime.cli import read_image

    runner = CascadeRunner(bundle, precision=precision, threads=1, budget=budget)
    answers = []
    for path in files:
        pixels, _, _ = read_image(path, runner.input_shape, runner.resize)
        r = runner.classify(pixels)[0]
        answers.append([r["class"], r["exit"], r["confidence"]])
    return answers


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_page_answers_as_the_python_runner(browser, web_bundle, precision, tmp_path):
    """Every sample test image, at two budgets: the same exit and class as the Python runner's
    device mode on the bundle's own stages (its int8 stages hand int8 maps on; the page's take
    float32), the same confidence to float32 rounding."""
    files = sorted(glob.glob(os.path.join(SAMPLE_TEST, "*", "*")))
    assert len(files) >= 100
    manifest = json.load(open(os.path.join(web_bundle, "manifest.json")))
    budgets = sorted(e["budget_macs"] for e in manifest["thresholds"])
    # between entries, so that both sides must pick the largest entry below the budget
    chosen = [(budgets[2] + budgets[3]) / 2, (budgets[-4] + budgets[-3]) / 2]
    with _serve(web_bundle) as url:
        page = _open(browser, f"{url}/web/index.html?precision={precision}")
        assert page.evaluate("window.tfFusionnet.error") is None
        exits_seen = set()
        for budget in chosen:
            web = page.evaluate(CLASSIFY_ALL, [[list(open(f, "rb").read()) for f in files], budget])
            python = _python_answers(web_bundle, precision, budget, files)
            mismatched = [(os.path.relpath(f, SAMPLE_TEST), w, p) for f, w, p in zip(files, web, python) if w[:2] != p[:2]]
            assert not mismatched, f"{len(mismatched)} of {len(files)} differ at budget {budget:.0f}: {mismatched[:5]}"
            assert max(abs(w[2] - p[2]) for w, p in zip(web, python)) < 1e-5
            exits_seen |= {w[1] for w in web}
        assert len(exits_seen) >= 2, "the budgets should send images to more than one exit"
        # The person's path: a file chosen in the page, the answer drawn.
        page.set_input_files("#file", files[0])
        page.wait_for_selector("#result:not([hidden])")
        assert page.text_content("#answer") in manifest["class_names"]
        shot = tmp_path / f"page_{precision}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert Image.open(shot).size[0] > 300


def test_page_resizes_and_converts_as_the_python_runner(browser, web_bundle, tmp_path):
    """Images of other sizes and modes (PNG: decoded exactly by both) become the same input
    pixels, byte for byte, in the page (Pillow's bilinear written in JavaScript) and in read_image:
    shrinking 15-fold, enlarging, cropping either side, alpha dropped, greyscale to RGB."""
    from tf_fusionnet.runtime.cli import read_image

    rng = np.random.default_rng(0)
    cases = {"wide.png": ((37, 50, 3), "RGB"), "tall_alpha.png": ((45, 20, 4), "RGBA"),
             "photo.png": ((480, 640, 3), "RGB"), "small_up.png": ((9, 13, 3), "RGB"),
             "grey.png": ((40, 40), "L"), "exact.png": ((32, 32, 3), "RGB")}
    paths = []
    for name, (shape, mode) in cases.items():
        values = rng.integers(0, 256, size=shape, dtype=np.uint8)
        if mode == "RGBA":  # opaque: a canvas keeps translucent pixels premultiplied (docs/export.md)
            values[..., 3] = 255
        if name == "photo.png":  # smooth content too, where rounding differences would show
            values = np.clip(np.add.outer(np.arange(480), np.arange(640))[..., None] // 5 + values // 8, 0, 255).astype(np.uint8)
        path = str(tmp_path / name)
        Image.fromarray(values, mode).save(path)
        paths.append(path)
    with _serve(web_bundle) as url:
        page = _open(browser, f"{url}/web/index.html")
        for path in paths:
            web = page.evaluate("async (bytes) => Array.from(await window.tfFusionnet.pixelsOf(new Blob([new Uint8Array(bytes)])))",
                                list(open(path, "rb").read()))
            python, _, _ = read_image(path, (32, 32, 3))
            assert np.array_equal(np.asarray(web, np.uint8), python.reshape(-1)), os.path.basename(path)


def _tampered_copy(web_bundle, tmp_path, name):
    copy = str(tmp_path / "bundle")
    shutil.copytree(web_bundle, copy)
    path = os.path.join(copy, *name.split("/"))
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))
    return copy


def test_page_refuses_a_tampered_stage_and_manifest(browser, web_bundle, tmp_path):
    """Behind a server that checks nothing (the stdlib's), the page's own Web Crypto checks refuse
    a stage whose bytes are not the manifest's, and a manifest that is not its digest's or the pin's."""
    bundle = _tampered_copy(web_bundle, tmp_path, "web/int8/stage_2.tflite")
    with _plain_static_server(bundle) as url:
        page = _open(browser, f"{url}/web/index.html?precision=int8")
        error = page.evaluate("window.tfFusionnet.error")
        assert error and "web/int8/stage_2.tflite: sha256 does not match the manifest" in error
        assert "sha256 does not match" in page.text_content("#status")
        assert page.is_disabled("#file")
        # the untouched float32 stages still open
        page = _open(browser, f"{url}/web/index.html?precision=float32")
        assert page.evaluate("window.tfFusionnet.error") is None
        # a pin that is not this manifest's digest
        page = _open(browser, f"{url}/web/index.html?pin={'0' * 64}")
        assert "is not the expected" in page.evaluate("window.tfFusionnet.error")
    edited = str(tmp_path / "edited")
    shutil.copytree(web_bundle, edited)
    manifest_path = os.path.join(edited, "manifest.json")
    manifest = json.load(open(manifest_path))
    manifest["thresholds"][0]["thresholds"][0] = 0.0
    json.dump(manifest, open(manifest_path, "w"))
    with _plain_static_server(edited) as url:
        page = _open(browser, f"{url}/web/index.html")
        assert "does not match manifest.sha256" in page.evaluate("window.tfFusionnet.error")


def test_page_threads_under_isolation_and_not_without(browser, web_bundle):
    with _serve(web_bundle) as url:
        page = _open(browser, f"{url}/web/index.html")
        assert page.evaluate("crossOriginIsolated") is True
        assert "threaded build" in page.text_content("#runtime")
    with _serve(web_bundle, isolate=False) as url:
        page = _open(browser, f"{url}/web/index.html")
        assert page.evaluate("window.tfFusionnet.error") is None
        assert "single-threaded build" in page.text_content("#runtime")


def _get(url):
    try:
        with urllib.request.urlopen(url) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), b""


def test_serve_sends_only_the_manifests_files_checked(web_bundle, tmp_path):
    """No browser needed: what the server answers for listed, unlisted, modified and linked files."""
    from tf_fusionnet.runtime import BundleError
    from tf_fusionnet.runtime.serve import make_server

    bundle = str(tmp_path / "bundle")
    shutil.copytree(web_bundle, bundle)
    (tmp_path / "secret.txt").write_text("private")
    os.symlink(str(tmp_path / "secret.txt"), os.path.join(bundle, "web", "leak.txt"))
    with Serving(make_server(bundle)) as url:
        status, headers, body = _get(f"{url}/web/litert/wasm/litert_wasm_internal.wasm")
        assert status == 200 and headers["Content-Type"] == "application/wasm"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        manifest = json.load(open(os.path.join(bundle, "manifest.json")))
        assert hashlib.sha256(body).hexdigest() == manifest["sha256"]["web/litert/wasm/litert_wasm_internal.wasm"]
        assert _get(f"{url}/")[0] == 200  # redirected to the page
        for unlisted in ("/report.json", "/web/leak.txt", "/web/litert/", "/../secret.txt", "/web/%2e%2e/report.json"):
            assert _get(url + unlisted)[0] == 404, unlisted
        page = os.path.join(bundle, "web", "page.js")
        open(page, "a").write("\nalert('x');\n")
        assert _get(f"{url}/web/page.js")[0] == 409
    plain = str(tmp_path / "plain")
    shutil.copytree(web_bundle, plain)
    manifest_path = os.path.join(plain, "manifest.json")
    manifest = json.load(open(manifest_path))
    del manifest["web"]
    raw = (json.dumps(manifest) + "\n").encode()
    open(manifest_path, "wb").write(raw)
    open(os.path.join(plain, "manifest.sha256"), "w").write(f"{hashlib.sha256(raw).hexdigest()}  manifest.json\n")
    with pytest.raises(BundleError, match="no web page"):
        make_server(plain)


def test_web_stages_match_the_bundles_stages(web_bundle):
    """The export's own check (report.json): the batch-1 web stages give the bundle stages' logits."""
    report = json.load(open(os.path.join(web_bundle, "report.json")))
    for precision in ("float32", "int8"):
        web = report["precisions"][precision]["web"]
        assert web["top1_differs_from_bundle"] == [0, 0, 0]
        assert max(web["max_abs_logit_diff_vs_bundle"]) < 1e-4
    manifest = json.load(open(os.path.join(web_bundle, "manifest.json")))
    assert all(name in manifest["sha256"] for entry in manifest["web"]["precisions"].values() for name in entry["stages"])
    assert "web/litert/wasm/litert_wasm_threaded_internal.wasm" in manifest["sha256"]


def test_a_web_bundle_is_replaced_by_a_new_export_and_a_users_file_in_it_is_not(web_bundle, tmp_path):
    from tf_fusionnet.export.destination import check_out_dir

    bundle = str(tmp_path / "bundle")
    shutil.copytree(web_bundle, bundle)
    check_out_dir(bundle, str(tmp_path / "run"))  # ours: a new export may replace it
    (tmp_path / "bundle" / "web" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to replace it"):
        check_out_dir(bundle, str(tmp_path / "run"))
