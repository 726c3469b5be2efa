"""Early-exit cascade over a tf_fusionnet TFLite bundle, for phones and small boards.

Needs only numpy, ai-edge-litert and (to read image files) Pillow:

    pip install ai-edge-litert numpy pillow
    python cascade_runner.py IMAGE_OR_FOLDER... [--bundle DIR] [--budget MACS] [--threads N] [--json]

Stage 1 runs on the image; when an exit's max softmax reaches its threshold the
cascade stops, otherwise the next stage continues from the feature maps the
previous one already computed. Python API:

    runner = CascadeRunner("bundle", budget=40e6)
    results = runner.classify(images_uint8_nhwc)   # load once, classify many

This file is copied into every bundle; it never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class BundleError(Exception):
    """A bundle, an image or an argument the runner cannot use; the message is for the user."""


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def load_manifest(bundle: str) -> dict:
    path = os.path.join(bundle, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise BundleError(f"{bundle}: no {MANIFEST}; not a tf_fusionnet bundle") from None
    except (OSError, ValueError) as error:
        raise BundleError(f"{path}: unreadable ({error})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: format version {manifest.get('format_version')!r}, "
                          f"this runner reads {FORMAT_VERSION}")
    return manifest


def verify_files(bundle: str, manifest: dict, names) -> None:
    """Checks the sha256 of every named file against the manifest before anything is loaded."""
    for name in names:
        path = os.path.join(bundle, name)
        expected = manifest["sha256"].get(name)
        if not os.path.exists(path):
            raise BundleError(f"{path}: missing from the bundle")
        if expected is None or sha256_file(path) != expected:
            raise BundleError(f"{path}: sha256 does not match the manifest (corrupt or modified bundle)")


def thresholds_for_budget(manifest: dict, budget: float) -> dict:
    """The manifest's entry with the largest fitted budget not above ``budget``."""
    table = sorted(manifest["thresholds"], key=lambda e: e["budget_macs"])
    fitting = [e for e in table if e["budget_macs"] <= budget]
    if not fitting:
        raise BundleError(f"--budget {budget:.0f} MACs is below the cheapest entry of the bundle "
                          f"({table[0]['budget_macs']:.0f} MACs)")
    return fitting[-1]


class CascadeRunner:
    """Runs the stages of a bundle with early exit.

    Args:
        bundle: the bundle folder (with ``manifest.json``).
        precision: one of the bundle's precisions ("float32", "float16", "int8").
        threads: LiteRT CPU threads.
        budget: average MACs per image; picks thresholds from the manifest.
        thresholds: explicit per-exit thresholds (overrides ``budget``); the
            last one is ignored (the last exit always answers).
    """

    def __init__(self, bundle: str, precision: str = "float32", threads: int = 1,
                 budget: float | None = None, thresholds=None):
        from ai_edge_litert.interpreter import Interpreter

        self.bundle = bundle
        self.manifest = load_manifest(bundle)
        if precision not in self.manifest["precisions"]:
            raise BundleError(f"precision {precision!r} not in the bundle "
                              f"(has {', '.join(self.manifest['precisions'])})")
        self.precision = precision
        files = self.manifest["precisions"][precision]["stages"]
        verify_files(bundle, self.manifest, files)
        self.runners = []
        for name in files:
            try:
                interpreter = Interpreter(model_path=os.path.join(bundle, name), num_threads=threads)
                self.runners.append(interpreter.get_signature_runner("serve"))
            except Exception as error:  # LiteRT raises ValueError/RuntimeError for bad files
                raise BundleError(f"{os.path.join(bundle, name)}: not a loadable TFLite stage ({error})") from None
        self.exit_macs = [float(m) for m in self.manifest["exit_macs"]]
        self.num_exits = len(self.runners)
        self.input_shape = tuple(self.manifest["input"]["shape"])
        self.mean = np.asarray(self.manifest["normalization"]["mean"], np.float32)
        self.std = np.asarray(self.manifest["normalization"]["std"], np.float32)
        if thresholds is not None:
            self.thresholds = [float(t) for t in thresholds]
            if len(self.thresholds) != self.num_exits:
                raise BundleError(f"{len(self.thresholds)} thresholds given for {self.num_exits} exits")
        elif budget is not None:
            self.thresholds = [float(t) for t in thresholds_for_budget(self.manifest, budget)["thresholds"]]
        else:  # no early exit: always the last exit
            self.thresholds = [float("inf")] * (self.num_exits - 1) + [float("-inf")]
        self.thresholds[-1] = float("-inf")

    # -- inputs -----------------------------------------------------------------

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> normalised float32, checking the shape."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise BundleError(f"images of shape {tuple(images.shape[1:])}, the model takes "
                              f"{'x'.join(map(str, self.input_shape))} (HxWxC)")
        return ((images.astype(np.float32) - self.mean) / self.std).astype(np.float32)

    def _run_stage(self, k: int, feed: dict) -> dict:
        return self.runners[k](**feed)

    # -- inference --------------------------------------------------------------

    def all_exit_logits(self, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
        """(K, N, classes) logits of every exit, running every stage on every image."""
        x = self.preprocess(images)
        per_batch = []
        for start in range(0, len(x), batch_size):
            feed = {"image": x[start:start + batch_size]}
            logits = []
            for k in range(self.num_exits):
                out = self._run_stage(k, feed)
                logits.append(out.pop("logits"))
                feed = out
            per_batch.append(np.stack(logits))
        return np.concatenate(per_batch, axis=1)

    def classify(self, images: np.ndarray, deadline_ms: float | None = None) -> list[dict]:
        """Early-exit classification of a batch (or one image).

        Every image goes through stage 1; only those not confident enough go
        on, with their cached feature maps. With ``deadline_ms`` (one image at
        a time), the cascade also stops when the time is up and returns the
        answer of the last exit it reached.
        """
        x = self.preprocess(images)
        if deadline_ms is not None:
            return [self._classify_one(x[i:i + 1], deadline_ms) for i in range(len(x))]
        n = len(x)
        result = [None] * n
        start = time.perf_counter()
        active = np.arange(n)
        feed = {"image": x}
        for k in range(self.num_exits):
            out = self._run_stage(k, feed)
            probs = softmax(out.pop("logits"))
            confidence = probs.max(axis=1)
            done = confidence >= self.thresholds[k]
            elapsed = (time.perf_counter() - start) * 1e3
            for j in np.flatnonzero(done):
                result[active[j]] = {"class": int(probs[j].argmax()), "confidence": float(confidence[j]),
                                     "exit": k + 1, "macs": self.exit_macs[k], "ms": elapsed / n}
            if done.all():
                break
            if done.any():  # only the images still undecided go on, with their feature maps
                keep = ~done
                active = active[keep]
                out = {name: value[keep] for name, value in out.items()}
            feed = out
        return result

    def _classify_one(self, x: np.ndarray, deadline_ms: float) -> dict:
        start = time.perf_counter()
        feed = {"image": x}
        for k in range(self.num_exits):
            out = self._run_stage(k, feed)
            probs = softmax(out.pop("logits"))[0]
            elapsed = (time.perf_counter() - start) * 1e3
            last = k == self.num_exits - 1
            if probs.max() >= self.thresholds[k] or last or elapsed >= deadline_ms:
                return {"class": int(probs.argmax()), "confidence": float(probs.max()), "exit": k + 1,
                        "macs": self.exit_macs[k], "ms": elapsed,
                        "deadline_hit": bool(elapsed >= deadline_ms and not last and probs.max() < self.thresholds[k])}
            feed = out
        raise AssertionError("unreachable")

    # -- latency budgets --------------------------------------------------------

    def stage_latency_ms(self, repeats: int = 20, cache: str | None = None) -> list[float]:
        """Median latency (batch 1) of every stage on this device, measured once and cached."""
        key = f"{self.precision}:{self.manifest['sha256'][self.manifest['precisions'][self.precision]['stages'][0]]}"
        if cache and os.path.exists(cache):
            with open(cache) as f:
                stored = json.load(f)
            if stored.get("key") == key:
                return stored["stage_ms"]
        feed = {"image": np.zeros((1,) + self.input_shape, np.float32)}
        latencies = []
        for k in range(self.num_exits):
            times = []
            for _ in range(repeats + 2):
                t0 = time.perf_counter()
                out = self._run_stage(k, feed)
                times.append((time.perf_counter() - t0) * 1e3)
            latencies.append(float(np.median(times[2:])))
            out.pop("logits")
            feed = out
        if cache:
            tmp = f"{cache}.tmp{os.getpid()}"
            try:
                with open(tmp, "w") as f:
                    json.dump({"key": key, "stage_ms": latencies}, f)
                os.replace(tmp, cache)
            except OSError:
                pass  # a read-only bundle still runs; it measures again next time
        return latencies

    def use_latency_budget(self, budget_ms: float, cache: str | None = None) -> dict:
        """Picks the manifest's thresholds whose expected latency (validation exit shares
        times this device's cumulative stage latency) is the largest within ``budget_ms``."""
        cumulative = np.cumsum(self.stage_latency_ms(cache=cache))
        best = None
        for entry in self.manifest["thresholds"]:
            expected = float(np.dot(entry["val_exit_shares"], cumulative))
            if expected <= budget_ms and (best is None or expected > best[0]):
                best = (expected, entry)
        if best is None:
            raise BundleError(f"--latency_budget_ms {budget_ms} is below what this device needs "
                              f"for the cheapest entry (stage 1 alone takes {cumulative[0]:.2f} ms)")
        self.thresholds = [float(t) for t in best[1]["thresholds"]]
        self.thresholds[-1] = float("-inf")
        return {"expected_ms": best[0], "budget_macs": best[1]["budget_macs"], "stage_ms": cumulative.tolist()}


def read_image(path: str, shape) -> np.ndarray:
    """Decodes an image file with Pillow into uint8 (H, W, C), checking its size and channels."""
    try:
        from PIL import Image
    except ImportError:
        raise BundleError("reading image files needs Pillow: pip install pillow") from None
    try:
        with Image.open(path) as img:
            img.load()
            channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 3, "CMYK": 4}.get(img.mode)
            if channels is None:
                raise BundleError(f"{path}: unsupported image mode {img.mode}")
            if img.mode == "P":
                img = img.convert("RGB")
            array = np.asarray(img, dtype=np.uint8)
    except BundleError:
        raise
    except Exception as error:
        raise BundleError(f"{path}: not a readable image ({error})") from None
    array = array[..., None] if array.ndim == 2 else array
    if array.shape != tuple(shape):
        raise BundleError(f"{path}: image is {'x'.join(map(str, array.shape))} (HxWxC), the model takes "
                          f"{'x'.join(map(str, shape))}")
    return array


def list_images(paths) -> list[str]:
    files = []
    for path in paths:
        if os.path.isdir(path):
            for root, _, names in sorted(os.walk(path)):
                files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.exists(path):
            files.append(path)
        else:
            raise BundleError(f"{path}: no such file or folder")
    if not files:
        raise BundleError("no images found (png/jpg/bmp/gif/webp)")
    return files


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise BundleError(message)


def main(argv=None) -> int:
    parser = _Parser(description="Early-exit classification with a tf_fusionnet TFLite bundle.")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--bundle", default=os.path.dirname(os.path.abspath(__file__)),
                        help="bundle folder (default: this file's folder)")
    parser.add_argument("--precision", default="float32", help="float32, float16 or int8 (as in the bundle)")
    parser.add_argument("--budget", type=float, help="average MACs per image (thresholds from the manifest)")
    parser.add_argument("--thresholds", help="explicit comma-separated per-exit thresholds")
    parser.add_argument("--latency_budget_ms", type=float, help="average milliseconds per image on this device")
    parser.add_argument("--deadline_ms", type=float, help="answer with the best exit reached when time is up")
    parser.add_argument("--threads", type=int, default=1, help="LiteRT CPU threads")
    parser.add_argument("--batch_size", type=int, default=1, help="images per cascade call")
    parser.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    try:
        args = parser.parse_args(argv)
        thresholds = [float(t) for t in args.thresholds.split(",")] if args.thresholds else None
        runner = CascadeRunner(args.bundle, args.precision, args.threads, args.budget, thresholds)
        if args.latency_budget_ms is not None:
            chosen = runner.use_latency_budget(args.latency_budget_ms,
                                               cache=os.path.join(args.bundle, f"latency_{args.precision}_{args.threads}t.json"))
            if not args.json:
                print(f"latency budget {args.latency_budget_ms} ms: expected {chosen['expected_ms']:.2f} ms "
                      f"(thresholds of the {chosen['budget_macs'] / 1e6:.1f}M-MAC entry)")
        files = list_images(args.images)
        names = runner.manifest.get("class_names") or []
        results = []
        for start in range(0, len(files), max(1, args.batch_size)):
            chunk = files[start:start + max(1, args.batch_size)]
            images = np.stack([read_image(f, runner.input_shape) for f in chunk])
            for path, r in zip(chunk, runner.classify(images, args.deadline_ms)):
                r = {"file": path, **r}
                if names:
                    r["label"] = names[r["class"]]
                results.append(r)
                if args.json:
                    print(json.dumps(r))
                else:
                    print(f"{path}: {r.get('label', r['class'])} ({r['confidence']:.3f}) exit {r['exit']}, "
                          f"{r['macs'] / 1e6:.2f}M MACs, {r['ms']:.2f} ms")
        if not args.json:
            n = len(results)
            print(f"{n} images: mean {np.mean([r['ms'] for r in results]):.2f} ms, "
                  f"mean {np.mean([r['macs'] for r in results]) / 1e6:.2f}M MACs; exits "
                  + ", ".join(f"{k + 1}: {sum(r['exit'] == k + 1 for r in results)}" for k in range(runner.num_exits)))
    except BundleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
