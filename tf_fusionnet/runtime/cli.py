"""``python BUNDLE/cascade_runner.py IMAGES...``: the runner as a batch tool, and its image files."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Iterable, Iterator

import numpy as np

from . import portable
from .manifest import BundleError
from .runner import CascadeRunner


MAX_IMAGE_PIXELS = 40_000_000  # a 40-megapixel photo; larger ones are refused before decoding


def read_image(path: str, shape, resize: str = portable.DEFAULT_RESIZE) -> tuple[np.ndarray, bool, bool]:
    """Decodes an image file into uint8 (H, W, C) under the training loader's mode rule, fitted to
    the model's input size by the bundle's ``resize`` rule (:func:`portable.fit_to_input`).

    Returns the array, whether the image had to be converted to the model's channels, and
    whether it was resized.
    """
    try:
        from PIL import Image
    except ImportError:
        raise BundleError("reading image files needs Pillow: pip install pillow") from None
    try:
        portable.check_regular_file(path)
        with Image.open(path) as img:
            if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:  # the header's size, before decoding
                raise BundleError(f"{path}: declares {img.size[0]}x{img.size[1]} pixels, more than the "
                                  f"{MAX_IMAGE_PIXELS:,} this runner decodes")
            img.load()
            array, converted = portable.image_to_array(img, int(shape[2]))
    except BundleError:
        raise
    except portable.ImageModeError as error:
        raise BundleError(f"{path}: {error}") from None
    except Exception as error:
        raise BundleError(f"{path}: not a readable image ({error})") from None
    try:
        fitted, resized = portable.fit_to_input(array, int(shape[0]), int(shape[1]), resize)
    except ValueError as error:
        raise BundleError(f"{path}: {error}") from None
    return fitted, converted, resized


def iter_images(paths, on_error=None) -> Iterator[str]:
    """Image files named or found (recursively, sorted) under folders; lazily, so a folder of a
    million images is never listed in memory at once.

    ``on_error(message)``: called for a named path that is missing or not a file, which is then
    skipped; without it such a path raises BundleError."""
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for n in sorted(names):
                    full = os.path.join(root, n)
                    if n.lower().endswith(portable.IMAGE_EXTENSIONS) and os.path.isfile(full):
                        yield full
            continue
        if not os.path.exists(path):
            problem = BundleError(f"{path}: no such file or folder")
        elif not os.path.isfile(path):
            problem = BundleError(f"{path}: not a regular file or folder")
        else:
            yield path
            continue
        if on_error is None:
            raise problem
        on_error(str(problem))


class RunningSummary:
    """Totals over a stream of results: constant memory whatever the number of images.

    ``class_names``: the bundle's; an image in a folder named after one of them counts toward
    a top-1 accuracy (the layout of a training folder)."""

    def __init__(self, num_exits: int, class_names=None):
        self.count = 0
        self.total_ms = 0.0
        self.total_macs = 0.0
        self.exit_counts = [0] * num_exits
        self.converted = 0
        self.resized = 0
        self.deadline_hits = 0
        self.unreadable = 0
        self.labelled = self.correct = 0
        self._class_index = {name: i for i, name in enumerate(class_names or [])}
        self.started = time.perf_counter()

    def expected_class(self, path) -> int | None:
        """The class an image's folder names, if it names one of the bundle's."""
        if not isinstance(path, str):
            return None
        return self._class_index.get(os.path.basename(os.path.dirname(os.path.abspath(path))))

    def add(self, result: dict) -> None:
        self.count += 1
        self.total_ms += result["ms"]
        self.total_macs += result["macs"]
        self.exit_counts[result["exit"] - 1] += 1
        self.deadline_hits += bool(result.get("deadline_hit"))
        expected = self.expected_class(result.get("file"))
        if expected is not None:
            self.labelled += 1
            self.correct += result["class"] == expected

    def as_dict(self) -> dict:
        n = max(1, self.count)
        summary = {"images": self.count, "mean_ms": self.total_ms / n, "mean_macs": self.total_macs / n,
                   "images_per_s": self.count / max(1e-9, time.perf_counter() - self.started),
                   "exit_counts": list(self.exit_counts), "deadline_hits": self.deadline_hits,
                   "converted": self.converted, "resized": self.resized, "unreadable": self.unreadable}
        if self.labelled:
            summary.update(labelled=self.labelled, top1=self.correct / self.labelled)
        return summary

    def line(self, channels: int) -> str:
        s = self.as_dict()
        text = (f"{self.count} images: mean {s['mean_ms']:.2f} ms, mean {s['mean_macs'] / 1e6:.2f}M MACs, "
                f"{s['images_per_s']:.1f} images/s; "
                "exits " + ", ".join(f"{k + 1}: {c}" for k, c in enumerate(self.exit_counts)))
        if self.labelled:
            text += f"; top-1 {100 * s['top1']:.1f}% on the {self.labelled} in class-named folders"
        if self.deadline_hits:
            text += f"; {self.deadline_hits} answered at the deadline"
        if self.converted:
            text += f"; {self.converted} converted to {channels} channel(s)"
        if self.resized:
            text += f"; {self.resized} fitted to the input size"
        if self.unreadable:
            text += f"; {self.unreadable} unreadable (named above)"
        return text


def classify_batches(runner: "CascadeRunner", batches: Iterable[tuple[list, np.ndarray]],
                     deadline_ms: float | None = None, summary: RunningSummary | None = None,
                     batch_size: int = 1) -> Iterator[dict]:
    """Streams one result per image for ``(names, uint8 images)`` batches; keeps nothing behind.

    With ``batch_size`` > 1 (and no deadline) the cascade runs in server mode
    (:meth:`CascadeRunner.classify_stream`): results come as images are answered, not in input
    order, and only the names of images still in the cascade are kept.
    """
    class_names = runner.manifest.get("class_names") or []

    def finish(name, r):
        if name is not None:
            r = {"file": name, **r}
        if class_names and r["class"] < len(class_names):
            r["label"] = class_names[r["class"]]
        if summary is not None:
            summary.add(r)
        return r

    if batch_size > 1 and deadline_ms is None:
        pending: dict[int, object] = {}
        seen = 0

        def images():
            nonlocal seen
            for names, batch in batches:
                pending.update(zip(range(seen, seen + len(names)), names))
                seen += len(names)
                yield batch

        for i, r in runner.classify_stream(images(), batch_size):
            yield finish(pending.pop(i), r)
        return
    for names, images in batches:
        for name, r in zip(names, runner.classify(images, deadline_ms)):
            yield finish(name, r)


def classify_files(runner: "CascadeRunner", files: Iterable[str], batch_size: int = 1,
                   deadline_ms: float | None = None, summary: RunningSummary | None = None,
                   on_error=None) -> Iterator[dict]:
    """Streams ``{"file", "class", ...}`` results, reading ``batch_size`` images at a time.

    ``on_error(message)``: called for an image that cannot be read, which is then skipped (and
    counted in ``summary.unreadable``); without it the first such image raises BundleError."""

    def batches():
        chunk: list[str] = []
        for path in files:
            chunk.append(path)
            if len(chunk) >= batch_size:
                yield from _read_all(chunk)
                chunk = []
        if chunk:
            yield from _read_all(chunk)

    said_resized: list[str] = []

    def _read_all(paths):
        names, images = [], []
        for path in paths:
            try:
                array, converted, resized = read_image(path, runner.input_shape, runner.resize)
            except BundleError as error:
                if on_error is None:
                    raise
                on_error(str(error))
                if summary is not None:
                    summary.unreadable += 1
                continue
            names.append(path)
            images.append(array)
            if summary is not None:
                summary.converted += converted
                summary.resized += resized
            if resized and not said_resized:
                said_resized.append(path)
                h, w = runner.input_shape[:2]
                print(f"note: images of another size are fitted to the model's {h}x{w} input: a centred crop to "
                      f"its aspect ratio, then a bilinear resize ({runner.resize}; first: {path})", file=sys.stderr)
        if images:
            yield names, np.stack(images)

    return classify_batches(runner, batches(), deadline_ms, summary, batch_size)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise BundleError(message)


def _positive(name: str, value, allow_zero: bool = False):
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise BundleError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value}")


def main(argv=None, default_bundle: str | None = None) -> int:
    """The command line; ``default_bundle``: the folder ``--bundle`` defaults to (the bundle whose
    ``cascade_runner.py`` runs; the runtime package's parent folder otherwise).

    A closed stdout is refused (Python would drop every answer silently); a reader that goes away
    (``| head -1``) ends the run quietly with status 1."""
    if sys.stdout is None:
        if sys.stderr is not None:
            print("error: standard output is closed; the answers would be lost", file=sys.stderr)
        return 2
    try:
        return _main(argv, default_bundle)
    except BrokenPipeError:
        # Python would print a traceback when it flushes stdout at exit: point stdout at nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main(argv=None, default_bundle: str | None = None) -> int:
    parser = _Parser(description="Early-exit classification with a tf_fusionnet TFLite bundle. Without "
                     "--budget, --thresholds or --latency_budget_ms every image is answered by the last exit "
                     "(no early exit). An image that cannot be read is reported on its own stderr line and "
                     "skipped; the exit status is then 1.")
    parser.add_argument("images", nargs="+", help="image files or folders (searched recursively; images in "
                        "folders named after the bundle's classes also give a top-1 accuracy)")
    parser.add_argument("--bundle", default=default_bundle or os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        help="bundle folder (default: the folder of the cascade_runner.py that runs)")
    parser.add_argument("--precision", default="float32",
                        help="float32 (default), float16 or int8, as the bundle has them")
    parser.add_argument("--budget", type=float, help="average MACs per image (thresholds from the manifest)")
    parser.add_argument("--thresholds", help="explicit comma-separated per-exit thresholds")
    parser.add_argument("--latency_budget_ms", type=float, help="average milliseconds per image on this device")
    parser.add_argument("--deadline_ms", type=float, help="answer with the best exit reached when time is up")
    parser.add_argument("--threads", type=int, default=1, help="LiteRT CPU threads (default 1)")
    parser.add_argument("--batch_size", type=int, default=1,
                        help="images per stage call; > 1 is server mode: results in the order answered")
    parser.add_argument("--expect_manifest_sha256", metavar="HEX",
                        help="refuse the bundle unless its manifest.json has this sha256 (pin the bundle an "
                             "app ships; see docs/reliability.md)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per image on stdout, then {\"summary\": {...}}")
    failures = []

    def report(message: str) -> None:
        failures.append(message)
        print("error: " + portable.display_name(" ".join(message.split())), file=sys.stderr, flush=True)

    try:
        args = parser.parse_args(argv)
        _positive("--budget", args.budget)
        _positive("--latency_budget_ms", args.latency_budget_ms)
        _positive("--deadline_ms", args.deadline_ms, allow_zero=True)
        if args.threads < 1 or args.batch_size < 1:
            raise BundleError("--threads and --batch_size must be integers >= 1")
        chosen_rules = [name for name, value in (("--budget", args.budget), ("--thresholds", args.thresholds),
                                                 ("--latency_budget_ms", args.latency_budget_ms)) if value is not None]
        if len(chosen_rules) > 1:  # each sets the thresholds; a second would be ignored without a word
            raise BundleError(f"{' and '.join(chosen_rules)} each choose the thresholds: give one of them")
        thresholds = None
        if args.thresholds:
            try:
                thresholds = [float(t) for t in args.thresholds.split(",")]
            except ValueError:
                raise BundleError(f"--thresholds must be comma-separated numbers, got {args.thresholds!r}") from None
        runner = CascadeRunner(args.bundle, args.precision, args.threads, args.budget, thresholds,
                               expect_manifest_sha256=args.expect_manifest_sha256)
        # Timings are measured on this machine (the key names it). A pinned bundle reads none
        # from its folder: a timing file is not covered by the pin, and a planted one would steer
        # --latency_budget_ms and --deadline_ms.
        runner.timing_cache = (None if args.expect_manifest_sha256 else
                               os.path.join(args.bundle, f"latency_{args.precision}_{args.threads}t.json"))
        if args.latency_budget_ms is not None:
            chosen = runner.use_latency_budget(args.latency_budget_ms)
            if not args.json:
                source = f"thresholds of the {chosen['budget_macs'] / 1e6:.1f}M-MAC entry"
                if chosen["upper_budget_macs"] is not None:
                    source += (f" for {100 * (1 - chosen['upper_share']):.0f}% of images, of the "
                               f"{chosen['upper_budget_macs'] / 1e6:.1f}M-MAC entry for the others")
                print(f"latency budget {args.latency_budget_ms} ms: expected {chosen['expected_ms']:.2f} ms ({source}; "
                      "then adjusted to the measured times)")
        summary = RunningSummary(runner.num_exits, runner.manifest.get("class_names"))
        files = iter_images(args.images, on_error=report)
        for r in classify_files(runner, files, args.batch_size, args.deadline_ms, summary, on_error=report):
            if args.json:
                print(json.dumps(r))
            else:
                print(f"{portable.display_name(r['file'])}: {portable.display_name(str(r.get('label', r['class'])))} "
                      f"({r['confidence']:.3f}) exit {r['exit']}, "
                      f"{r['macs'] / 1e6:.2f}M MACs, {r['ms']:.2f} ms")
        if summary.count == 0:
            if failures:
                return 1
            raise BundleError("no images found (" + "/".join(e.lstrip(".") for e in portable.IMAGE_EXTENSIONS) + ")")
        if args.json:
            print(json.dumps({"summary": summary.as_dict()}))
        else:
            print(summary.line(runner.channels))
    except BundleError as error:
        report(str(error))
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 1 if failures else 0


def console_main() -> None:
    """Console entry point ``tf-fusionnet-cascade --bundle BUNDLE IMAGES...`` of the installed
    package (``python BUNDLE/cascade_runner.py IMAGES...`` defaults to its own folder instead)."""
    args = sys.argv[1:]
    if not any(a == "--bundle" or a.startswith("--bundle=") for a in args) and not {"-h", "--help"} & set(args):
        print("error: tf-fusionnet-cascade needs --bundle BUNDLE (or run python BUNDLE/cascade_runner.py IMAGES...)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
