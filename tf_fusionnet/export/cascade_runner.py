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
import importlib.util
import json
import math
import os
import stat
import sys
import time
from typing import Iterable, Iterator

import numpy as np


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


sha256_file = _sha256_file
_PORTABLE = None


def _portable():
    """The image-mode rule and file checks shared with training: the bundle's own copy when this
    file runs from a bundle, the package's otherwise (never a module found elsewhere on sys.path).

    Loaded on first use, not on import, so that a bundle's ``portable.py`` runs only after its
    digest was checked against the bundle's manifest (and the manifest against a pin, if given):
    :class:`CascadeRunner` checks this file and ``portable.py`` before it loads anything."""
    global _PORTABLE
    if _PORTABLE is None:
        here = os.path.dirname(os.path.abspath(__file__))
        sibling = os.path.join(here, "portable.py")
        if os.path.exists(sibling):
            if os.path.exists(os.path.join(here, MANIFEST)):
                verify_files(here, load_manifest(here), ["portable.py"])
            spec = importlib.util.spec_from_file_location("_tf_fusionnet_bundle_portable", sibling)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _PORTABLE = module
        else:
            from tf_fusionnet import portable

            _PORTABLE = portable
    return _PORTABLE


MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"  # "HEX  manifest.json": `sha256sum -c manifest.sha256` checks it
FORMAT_VERSION = 4
# Version 3: int8 stages may take and return int8 tensors (``stage_io_dtype``). Version 4: stage 1
# may read the uint8 pixels and normalise them in its graph (``input.stage_1_reads``). Version 2
# bundles (float32 stage inputs and outputs at every precision) and 3 still run.
READABLE_FORMAT_VERSIONS = (2, 3, 4)
# Thresholds in the manifest are strict JSON: a number in [0, 1] (exit when the top softmax
# probability is >= it; 0 means always) or null (never exit at this stage).
NEVER_EXIT = None


STAGE_IO_DTYPES = ("float32", "int8")  # a precision's stage inputs and outputs (manifest stage_io_dtype)
# What stage 1 reads (manifest input.stage_1_reads; "normalized" before version 4): the uint8
# image as it is, normalised inside the graph, or the normalised image (float32, or int8 stages'
# quantised one) that the runner computes.
STAGE_1_READS = ("pixels", "normalized")


def reads_pixels(manifest: dict) -> bool:
    """Whether the bundle's stage 1 reads the uint8 pixels (format 4's default), from a manifest
    that :func:`validate_manifest` has passed; bundles before format 4 read the normalised image."""
    return manifest["input"].get("stage_1_reads", "normalized") == "pixels"

# Stage calls of one classify(batch): large enough for LiteRT's batched kernels, small enough that
# the padding at the end of a batch costs little.
CLASSIFY_BATCH = 32


class BundleError(Exception):
    """A bundle, an image or an argument the runner cannot use; the message is for the user."""


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def encode_thresholds(thresholds) -> list:
    """Per-exit thresholds as strict JSON values (+inf -> null, -inf -> 0.0)."""
    encoded = []
    for t in thresholds:
        t = float(t)
        if math.isnan(t):
            raise ValueError("a threshold is NaN")
        encoded.append(NEVER_EXIT if t == math.inf else min(max(t, 0.0), 1.0))
    return encoded


def decode_thresholds(values) -> list[float]:
    return [math.inf if v is NEVER_EXIT else float(v) for v in values]


def _last_exit_answers(values) -> list[float]:
    """Per-exit thresholds with the last exit always answering, whatever was given for it."""
    values = [float(v) for v in values]
    values[-1] = float("-inf")
    return values


def _top_probability(logits: np.ndarray) -> tuple[np.ndarray, float]:
    """One image's logits as float64 and its top softmax probability, with no full softmax:
    exp(z - max z) is exactly 1.0 at the top class, so 1 / sum(exp(z - max z)) is bit for bit
    softmax(z).max()."""
    z = logits.astype(np.float64)
    return z, 1.0 / np.exp(z - z.max()).sum()


# Up to this many classes, one image's answer is computed on a Python list: with numpy's fixed
# cost per call, 10 logits took 24.5 us in numpy and 9.6 us as a list (100: 18.5 and 24.4 us;
# interleaved on a 2-core EPYC, docs/export.md).
PYTHON_TOP_MAX_CLASSES = 32


def _top_class_and_confidence(values: list[float]) -> tuple[int, float]:
    """:func:`_top_probability` of one image's logits given as a Python list: the first top class
    and 1 / sum(exp(z - max z)), equal to numpy's to the last bit or two (the sum's order)."""
    top = max(values)
    return values.index(top), 1.0 / sum([math.exp(v - top) for v in values])


def _fail(key: str, expected: str) -> None:
    raise BundleError(f"{MANIFEST}: key {key!r} {expected}")


def is_bundle_name(name) -> bool:
    """Whether ``name`` may name a file of a bundle: a relative POSIX path whose parts are plain
    names (no ``..``, ``.``, empty part, backslash, NUL, drive or leading ``/``).

    Checked on the manifest's text, before the file system is touched, so that a received
    bundle's manifest can neither name a file outside the bundle nor learn, from the runner's
    errors, whether one exists."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name or name.startswith("/"):
        return False
    parts = name.split("/")
    return all(part not in ("", ".", "..") for part in parts) and ":" not in parts[0]


def bundle_path(bundle: str, name: str) -> str:
    """The path of the bundle's file ``name``, confined to the bundle: every file the runner
    opens in a bundle goes through here.

    Raises BundleError unless ``name`` passes :func:`is_bundle_name`, the path resolves (links
    followed) to a place inside the bundle folder, and it is a regular file (a FIFO or a device
    would block or never end). The message names the bundle's own path only: whether a file
    outside exists, or what it holds, is never told."""
    if not is_bundle_name(name):
        raise BundleError(f"{bundle}: {name!r} is not a file name inside the bundle")
    path = os.path.join(bundle, *name.split("/"))
    root = os.path.realpath(bundle)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
        raise BundleError(f"{path}: a link that leaves the bundle; bundles hold their files")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise BundleError(f"{path}: missing from the bundle") from None
    except OSError as error:
        raise BundleError(f"{path}: unreadable ({error.strerror or error})") from None
    if not stat.S_ISREG(mode):
        raise BundleError(f"{path}: not a regular file")
    return path


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_manifest(manifest) -> None:
    """Checks every key the runner reads, naming the first missing or bad one."""
    if not isinstance(manifest, dict):
        _fail("(top level)", "must be a JSON object")
    version = manifest.get("format_version")
    if isinstance(version, bool) or version not in READABLE_FORMAT_VERSIONS:
        newer = _is_number(version) and version > FORMAT_VERSION
        raise BundleError(f"{MANIFEST}: format version {version!r}, this runner reads "
                          f"{', '.join(map(str, READABLE_FORMAT_VERSIONS[:-1]))} and {READABLE_FORMAT_VERSIONS[-1]} ("
                          + ("use the cascade_runner.py inside the bundle, or a newer tf_fusionnet)" if newer else
                             "re-export the run with this version of tf_fusionnet)"))
    k = manifest.get("num_exits")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        _fail("num_exits", "must be an integer >= 1")
    shape = (manifest.get("input") or {}).get("shape") if isinstance(manifest.get("input"), dict) else None
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)
            and shape[2] in (1, 2, 3, 4)):
        _fail("input.shape", "must be [height, width, channels] with 1 to 4 channels")
    norm = manifest.get("normalization")
    for part in ("mean", "std"):
        values = norm.get(part) if isinstance(norm, dict) else None
        if not (isinstance(values, list) and len(values) == shape[2] and all(_is_number(v) for v in values)):
            _fail(f"normalization.{part}", f"must be a list of {shape[2]} finite numbers")
    if any(v <= 0 for v in norm["std"]):
        _fail("normalization.std", "must be positive")
    reads = manifest["input"].get("stage_1_reads", "normalized" if version < 4 else None)
    if reads not in STAGE_1_READS:
        _fail("input.stage_1_reads", f"must be one of {', '.join(STAGE_1_READS)}")
    names = manifest.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        _fail("class_names", "must be a list of strings or null")
    macs = manifest.get("exit_macs")
    if not (isinstance(macs, list) and len(macs) == k and all(_is_number(m) and m > 0 for m in macs)):
        _fail("exit_macs", f"must be a list of {k} positive numbers")
    model_exits = manifest.get("model_exits", list(range(1, k + 1)))  # absent in bundles of all exits before it
    if not (isinstance(model_exits, list) and len(model_exits) == k
            and all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in model_exits)
            and all(b > a for a, b in zip(model_exits, model_exits[1:]))):
        _fail("model_exits", f"must be {k} increasing exit numbers of the model")
    precisions = manifest.get("precisions")
    if not isinstance(precisions, dict) or not precisions:
        _fail("precisions", "must be a non-empty object")
    for name, entry in precisions.items():
        stages = entry.get("stages") if isinstance(entry, dict) else None
        if not (isinstance(stages, list) and len(stages) == k and all(isinstance(f, str) for f in stages)):
            _fail(f"precisions.{name}.stages", f"must be a list of {k} file names")
        for field in ("stages", "standalone"):
            if not all(is_bundle_name(f) for f in entry.get(field, [])) or not isinstance(entry.get(field, []), list):
                _fail(f"precisions.{name}.{field}", "must name files inside the bundle (relative, no '..')")
        if entry.get("stage_io_dtype", "float32") not in STAGE_IO_DTYPES:
            _fail(f"precisions.{name}.stage_io_dtype", f"must be one of {', '.join(STAGE_IO_DTYPES)}")
    table = manifest.get("thresholds")
    if not isinstance(table, list):
        _fail("thresholds", "must be a list")
    for i, entry in enumerate(table):
        values = entry.get("thresholds") if isinstance(entry, dict) else None
        if not (isinstance(values, list) and len(values) == k
                and all(v is NEVER_EXIT or (_is_number(v) and 0 <= v <= 1) for v in values)):
            _fail(f"thresholds[{i}].thresholds", f"must be {k} numbers in [0, 1] or null")
        for field in ("budget_macs",):
            if not _is_number(entry.get(field)):
                _fail(f"thresholds[{i}].{field}", "must be a finite number")
        shares = entry.get("val_exit_shares")
        if not (isinstance(shares, list) and len(shares) == k and all(_is_number(v) for v in shares)):
            _fail(f"thresholds[{i}].val_exit_shares", f"must be a list of {k} numbers")
    digests = manifest.get("sha256")
    if not (isinstance(digests, dict) and all(_is_sha256(v) for v in digests.values())):
        _fail("sha256", "must map file names to sha256 hex digests")
    if not all(is_bundle_name(n) for n in digests):
        _fail("sha256", "must name files inside the bundle (relative, no '..')")
    specs = manifest.get("stages")  # the writer's record of each stage's tensors; absent before format 4
    if specs is not None:
        if not (isinstance(specs, list) and len(specs) == k):
            _fail("stages", f"must be a list of {k} stage records")
        for i, spec in enumerate(specs):
            names_of = lambda field: spec.get(field) if isinstance(spec, dict) else None
            for field in ("inputs", "outputs"):
                if not (isinstance(names_of(field), list) and all(isinstance(n, str) for n in names_of(field))):
                    _fail(f"stages[{i}].{field}", "must be a list of tensor names")
            shapes = names_of("input_shapes")
            if not (isinstance(shapes, list) and len(shapes) == len(spec["inputs"]) and all(
                    isinstance(d, list) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in d)
                    for d in shapes)):
                _fail(f"stages[{i}].input_shapes", "must give one list of positive sizes per input")


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def load_manifest(bundle: str, expect_sha256: str | None = None) -> dict:
    """Reads, digest-checks and validates a bundle's manifest.

    ``expect_sha256``: the sha256 the app pinned for this manifest (hex). The bundle's own
    ``manifest.sha256`` only catches accidents, since whoever edits the manifest can rewrite it;
    a pin kept outside the bundle catches edits too, and through the manifest's digests of every
    file, edits anywhere in the bundle."""
    if expect_sha256 is not None and not _is_sha256(str(expect_sha256).lower()):
        raise BundleError(f"the expected manifest sha256 must be 64 hex digits, got {expect_sha256!r}")
    try:
        path = bundle_path(bundle, MANIFEST)
    except BundleError as error:
        if not os.path.lexists(os.path.join(bundle, MANIFEST)):
            raise BundleError(f"{bundle}: no {MANIFEST}; not a tf_fusionnet bundle") from None
        raise error from None
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as error:
        raise BundleError(f"{path}: unreadable ({error.strerror or error})") from None
    digest = hashlib.sha256(raw).hexdigest()
    if expect_sha256 is not None:
        if digest != str(expect_sha256).lower():
            raise BundleError(f"{path}: sha256 {digest} is not the expected {str(expect_sha256).lower()} "
                              "(another or a modified bundle)")
    else:
        try:
            with open(bundle_path(bundle, MANIFEST_DIGEST)) as f:
                recorded = f.read().split()[0]
        except (BundleError, OSError, IndexError, UnicodeDecodeError):
            raise BundleError(f"{bundle}: no readable {MANIFEST_DIGEST}; the manifest cannot be checked") from None
        if digest != recorded:
            raise BundleError(f"{path}: does not match {MANIFEST_DIGEST} (edited or corrupt bundle)")

    def refuse_constant(name):
        raise ValueError(f"{name} is not JSON")

    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=refuse_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise BundleError(f"{path}: not strict JSON ({error})") from None
    validate_manifest(manifest)
    return manifest


# The runtime's own files in a bundle: checked against the manifest like the stages.
RUNTIME_FILES = ("cascade_runner.py", "portable.py")


def verify_files(bundle: str, manifest: dict, names) -> None:
    """Checks the sha256 of every named file against the manifest before anything is loaded."""
    for name in names:
        expected = manifest["sha256"].get(name)
        path = bundle_path(bundle, name)
        if expected is None or sha256_file(path) != expected:
            raise BundleError(f"{path}: sha256 does not match the manifest (corrupt or modified bundle)")


def entry_for_budget(manifest: dict, budget: float) -> dict:
    """The manifest's entry with the largest fitted budget not above ``budget``."""
    table = sorted(manifest["thresholds"], key=lambda e: e["budget_macs"])
    if not table:
        raise BundleError("the bundle has no fitted thresholds (exported with --thresholds_from none); "
                          "give --thresholds or run without a budget")
    fitting = [e for e in table if e["budget_macs"] <= budget]
    if not fitting:
        raise BundleError(f"--budget {budget:.0f} MACs is below the cheapest entry of the bundle "
                          f"({table[0]['budget_macs']:.0f} MACs)")
    return fitting[-1]


def quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """float -> int8 as TFLite's QUANTIZE computes it: x / scale in float32, rounded half away
    from zero, plus the zero point, clamped to [-128, 127]."""
    y = (np.asarray(x, np.float32) / np.float32(scale)).astype(np.float64)
    q = np.trunc(y + np.copysign(0.5, y)) + zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """int8 -> float32 as TFLite's DEQUANTIZE: scale * (q - zero_point)."""
    return (np.asarray(q, np.int32) - zero_point).astype(np.float32) * np.float32(scale)


def same_quantization(a: tuple[float, int] | None, b: tuple[float, int] | None) -> bool:
    """Whether a tensor written with quantisation ``a`` reads as ``b`` without conversion (None: float32).

    A stage's int8 output and the next stage's input are calibrated on the same float activations,
    so in MSDNet's and FusionNet's bundles their scales agree to float32 rounding (relative 3e-7
    measured), not bit for bit; in RANet's, the converter gives two of stage 2's inputs other
    scales than stage 1's outputs, and those are requantised. Within a
    relative 1e-6 and with one zero point, dequantising and quantising again gives back every
    int8 value (|q - zero point| <= 255, so the value moves by under 3e-4 of a step)."""
    if a is None or b is None:
        return a is None and b is None
    return a[1] == b[1] and abs(a[0] - b[0]) <= 1e-6 * abs(b[0])


def _converter(source: tuple[float, int] | None, target: tuple[float, int] | None):
    """The function that turns a tensor quantised as ``source`` into one quantised as ``target``."""
    if source is None:
        return lambda x: quantize(x, *target)
    if target is None:
        return lambda q: dequantize(q, *source)
    return lambda q: quantize(dequantize(q, *source), *target)


def _tensor_quantization(detail: dict) -> tuple[float, int] | None:
    """(scale, zero point) of a stage's int8 tensor, None for a float32 one."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.int8:
        scale, zero_point = detail["quantization"]
        return float(scale), int(zero_point)
    if dtype != np.float32:
        raise ValueError(f"tensor of type {dtype}; stages take and return float32 or int8 (stage 1 may read uint8)")
    return None


def check_stage(manifest: dict, k: int, path: str, input_details: dict, output_details: dict,
                written: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Checks stage ``k`` (0-based) as loaded from ``path`` against what the manifest says of it
    and what the earlier stages return; every stage a runner loads passes here.

    A stage that takes another image size or answers another number of classes than the
    manifest names would run and give plausible, wrong answers (a 3-class model under a
    10-class manifest answered class 2 for every image), so each is refused: its tensor names
    and input shapes against ``stages[k]`` (bundles of format 4), stage 1's image against
    ``input.shape``, every other input against the earlier output of that name, and the logits
    against ``class_names`` and the other stages. ``written``: each earlier output's shape
    (without the batch dimension); returns it with this stage's outputs added."""
    shape_of = lambda d: tuple(int(v) for v in d["shape"][1:])
    shown = lambda shape: "x".join(map(str, shape)) or "a scalar"
    spec = (manifest.get("stages") or [None] * (k + 1))[k]
    if spec is not None:
        for side, details, listed in (("inputs", input_details, spec["inputs"]),
                                      ("outputs", output_details, spec["outputs"])):
            if sorted(details) != sorted(listed):
                raise BundleError(f"{path}: {side} {', '.join(sorted(details))}, the manifest's stages[{k}] "
                                  f"lists {', '.join(sorted(listed))}")
        for name, expected in zip(spec["inputs"], spec["input_shapes"]):
            if shape_of(input_details[name]) != tuple(expected):
                raise BundleError(f"{path}: input {name} is {shown(shape_of(input_details[name]))}, the manifest's "
                                  f"stages[{k}] says {shown(expected)}")
    if k == 0:
        if "image" not in input_details:
            raise BundleError(f"{path}: stage 1 has no input named image")
        if shape_of(input_details["image"]) != tuple(manifest["input"]["shape"]):
            raise BundleError(f"{path}: reads {shown(shape_of(input_details['image']))} images, the manifest's "
                              f"input.shape says {shown(manifest['input']['shape'])}")
    elif "image" in input_details and shape_of(input_details["image"]) != tuple(manifest["input"]["shape"]):
        raise BundleError(f"{path}: reads {shown(shape_of(input_details['image']))} images, the manifest's "
                          f"input.shape says {shown(manifest['input']['shape'])}")
    for name, detail in input_details.items():
        if name != "image" and name in written and shape_of(detail) != written[name]:
            raise BundleError(f"{path}: input {name} is {shown(shape_of(detail))}, the earlier stage that returns it "
                              f"gives {shown(written[name])}")
    if "logits" not in output_details or len(shape_of(output_details["logits"])) != 1:
        raise BundleError(f"{path}: returns no logits vector")
    classes = shape_of(output_details["logits"])[0]
    names = manifest.get("class_names")
    if names and classes != len(names):
        raise BundleError(f"{path}: answers {classes} classes, the manifest names {len(names)}")
    if "logits" in written and written["logits"] != (classes,):
        raise BundleError(f"{path}: answers {classes} classes, stage 1 answers {written['logits'][0]}")
    return {**written, **{n: shape_of(d) for n, d in output_details.items()}}


class CascadeRunner:
    """Runs the stages of a bundle with early exit.

    Args:
        bundle: the bundle folder (with ``manifest.json``).
        precision: one of the bundle's precisions ("float32", "float16", "int8").
        threads: LiteRT CPU threads.
        budget: average MACs per image; picks thresholds from the manifest.
        thresholds: explicit per-exit thresholds (overrides ``budget``); the
            last one is ignored (the last exit always answers).
        expect_manifest_sha256: the sha256 (hex) of the bundle's ``manifest.json`` as the app
            shipped it: any other manifest, and through its digests any other file, is refused.
            Without it the bundle is checked against its own digests, which catch accidents only.
    """

    def __init__(self, bundle: str, precision: str = "float32", threads: int = 1,
                 budget: float | None = None, thresholds=None, expect_manifest_sha256: str | None = None):
        self.bundle = bundle
        self.manifest = load_manifest(bundle, expect_manifest_sha256)
        verify_files(bundle, self.manifest, [n for n in RUNTIME_FILES if n in self.manifest["sha256"]])
        if precision not in self.manifest["precisions"]:
            raise BundleError(f"precision {precision!r} not in the bundle "
                              f"(has {', '.join(self.manifest['precisions'])})")
        self.precision = precision
        self.threads = threads
        self.timing_cache: str | None = None  # where cascade_timings() keeps its measurement
        self._mix: tuple[list[float], float] | None = None  # use_latency_budget's upper entry, weight
        self._mix_credit = 0.0
        self._latency: dict | None = None  # use_latency_budget's budget, target and entry curve
        self._stage_cost: list[float] | None = None  # deadline_ms's per-stage cost envelope
        self._probe_wait: list[int] | None = None  # deadline_ms: skips before each stage is re-measured
        self._timings: dict | None = None
        files = self.manifest["precisions"][precision]["stages"]
        verify_files(bundle, self.manifest, files)
        self.exit_macs = [float(m) for m in self.manifest["exit_macs"]]
        # The bundle's exit k is the model's exit model_exits[k-1] (a bundle may keep some exits only).
        self.model_exits = list(self.manifest.get("model_exits", range(1, len(files) + 1)))
        self.input_shape = tuple(self.manifest["input"]["shape"])
        # LiteRT prints "Created TensorFlow Lite XNNPACK delegate" on fd 2 when it loads and first
        # runs a model; one chained warm-up pass here keeps that (and first-call latency) out of use.
        self.reads_pixels = reads_pixels(self.manifest)
        with _portable().captured_stderr_fd((BundleError,)):
            self._load_stages(bundle, files, threads)
            self.run_stages(np.zeros((1,) + self.input_shape, np.uint8 if self.reads_pixels else np.float32))
        self.num_exits = len(self.interpreters)
        self.channels = self.input_shape[2]
        self.mean = np.asarray(self.manifest["normalization"]["mean"], np.float32)
        self.std = np.asarray(self.manifest["normalization"]["std"], np.float32)
        # Where stage 1 reads the normalised image: each channel's 256 pixel values, normalised
        # (and for int8 stages quantised) once, so a uint8 image becomes stage 1's input in one add
        # and one take (entry 256 * c + v: channel c, value v) instead of three float passes (five
        # for int8). The same float32 operations as preprocess, so the same values bit for bit.
        self._image_table = self._channel_offsets = None
        if not self.reads_pixels:
            pixels = np.arange(256, dtype=np.float32)[:, None]
            normalised = (pixels - self.mean) / self.std
            if self._image_quantization is not None:
                normalised = quantize(normalised, *self._image_quantization)
            self._image_table = normalised.T.reshape(-1)
            self._channel_offsets = (256 * np.arange(self.channels)).astype(np.uint16)
        if thresholds is not None:
            values = [float(t) for t in thresholds]
            if any(math.isnan(t) for t in values):
                raise BundleError("thresholds must be numbers, not NaN")
            if len(values) != self.num_exits:
                raise BundleError(f"{len(values)} thresholds given for {self.num_exits} exits")
            self.thresholds = values
        elif budget is not None:
            self.thresholds = decode_thresholds(entry_for_budget(self.manifest, budget)["thresholds"])
        else:  # no early exit: always the last exit
            self.thresholds = [float("inf")] * self.num_exits

    @property
    def thresholds(self) -> list[float]:
        return self._thresholds

    @thresholds.setter
    def thresholds(self, values) -> None:
        """Per-exit thresholds for every image; ends a :meth:`use_latency_budget` mixture."""
        self._thresholds = _last_exit_answers(values)
        self._mix = self._latency = None

    def _upper_entry(self, n: int) -> np.ndarray | None:
        """For the next n images, whether each uses the mixture's upper entry (None: no mixture).

        Deterministic: a running credit grows by the upper entry's weight per image, and an image
        takes the upper entry whenever the credit reaches 1, so any stretch of images holds the
        weight's share of upper-entry images to within one image."""
        if self._mix is None:
            return None
        weight = self._mix[1]
        upper = np.zeros(n, bool)
        for i in range(n):
            self._mix_credit += weight
            if self._mix_credit >= 1.0:
                self._mix_credit -= 1.0
                upper[i] = True
        return upper

    def _load_stages(self, bundle: str, files, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        # Raw interpreters rather than signature runners: a signature runner call copies every
        # output out and re-checks every input's shape, and a runner object holds a reference that
        # makes LiteRT refuse views of its buffers. Measured interleaved (1-2 threads, both models,
        # float32/int8), chaining with views cut the chain's overhead over the whole model from
        # 1.14-1.43x to 1.05-1.30x (docs/export.md).
        self.interpreters = []
        self.stage_inputs, self.stage_outputs = [], []
        # (scale, zero point) of every int8 input and output, None for float32 ones.
        self.stage_input_quantization: list[dict] = []
        self.stage_output_quantization: list[dict] = []
        io_dtype = self.manifest["precisions"][self.precision].get("stage_io_dtype", "float32")
        written: dict[str, tuple[int, ...]] = {}
        for name in files:
            path = bundle_path(bundle, name)
            try:
                interpreter = Interpreter(model_path=path, num_threads=threads)
                interpreter.allocate_tensors()
                signature = interpreter.get_signature_runner("serve")
                input_details, output_details = signature.get_input_details(), signature.get_output_details()
                del signature
                inputs = {n: d["index"] for n, d in input_details.items()}
                outputs = {n: d["index"] for n, d in output_details.items()}
                # Stage 1's image may be the uint8 pixels (normalised in the graph): no quantisation.
                pixels = {n for n, d in input_details.items() if np.dtype(d["dtype"]) == np.uint8}
                in_quant = {n: None if n in pixels else _tensor_quantization(d) for n, d in input_details.items()}
                out_quant = {n: _tensor_quantization(d) for n, d in output_details.items()}
            except Exception as error:  # LiteRT raises ValueError/RuntimeError for bad files
                raise BundleError(f"{path}: not a loadable TFLite stage ({error})") from None
            written = check_stage(self.manifest, len(self.interpreters), path, input_details, output_details, written)
            if pixels - ({"image"} if not self.interpreters else set()):
                raise BundleError(f"{path}: reads uint8 {', '.join(sorted(pixels))}; only stage 1's image may be uint8")
            if not self.interpreters and ("image" in pixels) != self.reads_pixels:
                raise BundleError(f"{path}: stage 1 reads {'uint8 pixels' if pixels else 'a normalised image'}, "
                                  "not what the manifest's input.stage_1_reads says")
            checked = [q for n, q in in_quant.items() if n not in pixels] + list(out_quant.values())
            if any((q is not None) != (io_dtype == "int8") for q in checked):
                raise BundleError(f"{path}: its inputs and outputs are not all {io_dtype}, "
                                  "as the manifest's stage_io_dtype says")
            self.interpreters.append(interpreter)
            self.stage_inputs.append(inputs)
            self.stage_outputs.append(outputs)
            self.stage_input_quantization.append(in_quant)
            self.stage_output_quantization.append(out_quant)
        self._stage_batch = [None] * len(files)  # the batch size each interpreter is allocated for
        # A stage reads named tensors returned by any earlier stage (RANet reads several stages
        # back), so the runner keeps a pool of them and drops each after its last reader.
        available = {"image"}
        for k, name in enumerate(files):
            missing = sorted(set(self.stage_inputs[k]) - available)
            if missing:
                raise BundleError(f"{os.path.join(bundle, name)} reads {', '.join(missing)}, which no earlier "
                                  "stage returns")
            available |= set(self.stage_outputs[k])
        # int8 stages hand their feature maps on as int8. A tensor whose reader expects another
        # quantisation than its writer gave it (two of stage 2's inputs in RANet's bundles; see
        # same_quantization) is converted on the way, and so is the image when a caller passes
        # floats to int8 stages.
        self._image_quantization = self.stage_input_quantization[0]["image"]
        written = {"image": self._image_quantization}
        self._conversions: list[dict] = []
        for k in range(len(files)):
            self._conversions.append({n: _converter(written[n], q) for n, q in self.stage_input_quantization[k].items()
                                      if not same_quantization(written[n], q)})
            written.update(self.stage_output_quantization[k])
        # An int8 exit's 256 possible logit values, dequantised once: entry u is int8 value
        # u.view(int8), so dequantising is one take (logits.view(uint8)) instead of three passes.
        all_int8 = np.arange(256, dtype=np.uint8).view(np.int8)
        self._logits_tables = [None if q["logits"] is None else dequantize(all_int8, *q["logits"])
                               for q in self.stage_output_quantization]
        self._logits_lists = [None if table is None else table.tolist() for table in self._logits_tables]
        self._logits_index = [outputs["logits"] for outputs in self.stage_outputs]
        # What a stage hands on: read for one image only when it goes on to the next stage.
        self._state_outputs = [{n: i for n, i in outputs.items() if n != "logits"} for outputs in self.stage_outputs]
        classes = self.interpreters[0].get_tensor(self._logits_index[0]).shape[-1]
        self._python_top = classes <= PYTHON_TOP_MAX_CLASSES
        last_reader: dict[str, int] = {}
        for k, names in enumerate(self.stage_inputs):
            for n in names:
                last_reader[n] = k
        self._dead_after = [[n for n, last in last_reader.items() if last == k] for k in range(len(files))]

    # -- inputs -----------------------------------------------------------------

    def _checked(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise BundleError(f"images of shape {tuple(images.shape[1:])}, the model takes "
                              f"{'x'.join(map(str, self.input_shape))} (HxWxC)")
        return images

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> normalised float32, checking the shape."""
        x = self._checked(images).astype(np.float32)  # a new array: normalised in place, one pass per operation
        np.subtract(x, self.mean, out=x)
        np.divide(x, self.std, out=x)
        return x

    def stage_input(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> what stage 1 reads: the pixels themselves where it normalises them
        in its graph (other dtypes rounded to 0..255), else :meth:`preprocess`'s float32, or for
        int8 stages the same quantised with stage 1's input scale and zero point."""
        images = self._checked(images)
        if self.reads_pixels:
            return images if images.dtype == np.uint8 else np.clip(np.rint(images), 0, 255).astype(np.uint8)
        if images.dtype != np.uint8:
            x = self.preprocess(images)
            return x if self._image_quantization is None else quantize(x, *self._image_quantization)
        return self._image_table.take(np.add(images, self._channel_offsets, dtype=np.uint16))

    def _invoke(self, k: int, pool: dict) -> None:
        """Sets stage k's inputs from the tensors of ``pool`` it reads and runs it."""
        interpreter = self.interpreters[k]
        inputs = self.stage_inputs[k]
        n = len(pool[next(iter(inputs))])
        if self._stage_batch[k] != n:  # LiteRT plans again for a new batch size; only then
            for name, index in inputs.items():
                interpreter.resize_tensor_input(index, pool[name].shape)
            interpreter.allocate_tensors()
            self._stage_batch[k] = n
        conversions = self._conversions[k]
        if conversions:
            for name, index in inputs.items():
                interpreter.set_tensor(index, conversions[name](pool[name]) if name in conversions else pool[name])
        else:
            for name, index in inputs.items():
                interpreter.set_tensor(index, pool[name])
        interpreter.invoke()

    def _hand_on(self, k: int, pool: dict, copy: bool) -> None:
        """Adds to ``pool`` what stage k (just run) returns besides its logits, and drops what no
        later stage reads.

        ``copy=False`` adds views of the interpreter's output buffers instead of copies. They hold
        until stage k runs again, and LiteRT refuses to run it while one is alive: only for a
        caller that drops the pool before then (one image through the stages)."""
        interpreter = self.interpreters[k]
        for name, index in self._state_outputs[k].items():
            pool[name] = interpreter.get_tensor(index) if copy else interpreter.tensor(index)()
        for name in self._dead_after[k]:
            pool.pop(name, None)

    def _run_stage(self, k: int, pool: dict) -> np.ndarray:
        """Runs stage k on the tensors of ``pool`` it reads; adds copies of what it returns, drops
        what no later stage reads, and returns its exit's logits as floats."""
        self._invoke(k, pool)
        self._hand_on(k, pool, copy=True)
        return self._float_logits(k, self.interpreters[k].get_tensor(self._logits_index[k]))

    def _answer(self, k: int, logits: np.ndarray) -> tuple[int, float]:
        """One image's top class and confidence at exit k, from the stage's own (int8 or float) logits."""
        if not self._python_top:
            z, confidence = _top_probability(self._float_logits(k, logits))
            return int(z.argmax()), float(confidence)
        table = self._logits_lists[k]
        values = logits.tolist() if table is None else [table[u] for u in logits.view(np.uint8).tolist()]
        return _top_class_and_confidence(values)

    def _float_logits(self, k: int, logits: np.ndarray) -> np.ndarray:
        table = self._logits_tables[k]
        return logits if table is None else table.take(logits.view(np.uint8))

    def run_stages(self, x: np.ndarray) -> list[np.ndarray]:
        """Logits of every exit for images ``x`` as :meth:`stage_input` returns them, running every
        stage. Where stage 1 reads the normalised image, :meth:`preprocess`'s float32 also does
        (quantised here for int8 stages)."""
        if self.reads_pixels and x.dtype != np.uint8:
            raise BundleError("stage 1 of this bundle reads uint8 pixels: pass stage_input(images), not normalised floats")
        if self._image_quantization is not None and x.dtype != np.int8:
            x = quantize(x, *self._image_quantization)
        pool = {"image": x}
        return [self._run_stage(k, pool) for k in range(len(self.interpreters))]

    # -- inference --------------------------------------------------------------

    def all_exit_logits(self, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
        """(K, N, classes) logits of every exit, running every stage on every image."""
        x = self.stage_input(images)
        per_batch = []
        for start in range(0, len(x), batch_size):
            per_batch.append(np.stack(self.run_stages(x[start:start + batch_size])))
        return np.concatenate(per_batch, axis=1)

    def classify(self, images: np.ndarray, deadline_ms: float | None = None) -> list[dict]:
        """Early-exit classification of a batch (or one image), results in input order.

        Every image goes through stage 1; only those not confident enough go
        on, with their cached feature maps. A batch runs as :meth:`classify_stream`
        with stage calls of ``min(len(images), CLASSIFY_BATCH)``. With ``deadline_ms``
        (one image at a time), the cascade also stops when the time is up and
        returns the answer of the last exit it reached.
        """
        start = time.perf_counter()
        x = self.stage_input(images)
        if deadline_ms is not None or len(x) == 1:
            results = []
            for i in range(len(x)):
                upper = self._upper_entry(1)
                results.append(self._classify_one(x[i:i + 1], deadline_ms, upper is not None and upper[0]))
                if self._latency is not None:
                    self._latency_feedback((time.perf_counter() - start) * 1e3)
                start = time.perf_counter()
            return results
        if not len(x):
            return []
        result = [None] * len(x)
        for i, r in self._stream([x], min(len(x), CLASSIFY_BATCH)):
            result[i] = r
        return result

    def classify_stream(self, batches: Iterable[np.ndarray], batch_size: int = 32) -> Iterator[tuple[int, dict]]:
        """Server mode: early exit over a stream of uint8 image batches, every stage call at one size.

        An image that no exit has answered waits in its next stage's queue until ``batch_size``
        images are there, so each stage always runs on a full batch of one shape. LiteRT plans a
        graph again whenever an input's shape changes, and that cost 2.7-7.9 ms per stage call here
        (batch 32, 2 threads), more than the stage itself; shrinking the batch after each exit,
        as a one-call cascade would, spends more than the exits save. When the stream ends,
        each queue is run once more, padded to ``batch_size``.

        Yields ``(index, result)`` as images are answered, so not in input order; ``index``
        counts images from 0 over the whole stream. A result's ``ms`` is its latency: from the
        moment its batch arrived to its answer, time spent waiting in queues included.
        """
        if batch_size < 1:
            raise BundleError(f"batch_size must be >= 1, got {batch_size}")
        return self._stream((self.stage_input(b) for b in batches), batch_size)

    def _stream(self, batches: Iterable[np.ndarray], batch_size: int) -> Iterator[tuple[int, dict]]:
        # A queue entry is (index, start, upper, pool, rows): images index[i] (which arrived at
        # start[i]; upper[i]: the latency-budget mixture's upper entry) whose maps are rows[i] of
        # pool's arrays. Rows are gathered once, when a stage takes them.
        queues: list[list[tuple]] = [[] for _ in range(self.num_exits)]
        waiting = [0] * self.num_exits

        def take(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
            """Up to batch_size images from the front of queue k, as one (index, start, upper, pool)."""
            parts, n = [], 0
            while queues[k] and n < batch_size:
                index, start, upper, pool, rows = queues[k].pop(0)
                if n + len(index) > batch_size:
                    cut = batch_size - n
                    queues[k].insert(0, (index[cut:], start[cut:], upper[cut:], pool, rows[cut:]))
                    index, start, upper, rows = index[:cut], start[:cut], upper[:cut], rows[:cut]
                parts.append((index, start, upper, pool, rows))
                n += len(index)
            waiting[k] -= n
            index, start, upper, pool, rows = parts[0]
            if len(parts) == 1 and len(rows) == len(next(iter(pool.values()))):
                return index, start, upper, pool  # a whole batch that went on untouched: no copy
            return (*(np.concatenate([p[i] for p in parts]) for i in range(3)),
                    {m: np.concatenate([p[3][m][p[4]] for p in parts]) for m in pool})

        def run(k: int) -> Iterator[tuple[int, dict]]:
            index, start, upper, pool = take(k)
            n = len(index)
            if n < batch_size:  # the end of the stream: pad, so the stage keeps its shape
                pool = {m: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
                        for m, v in pool.items()}
            probs = softmax(self._run_stage(k, pool)[:n])
            confidence = probs.max(axis=1)
            threshold = self.thresholds[k] if self._mix is None else np.where(upper, self._mix[0][k], self.thresholds[k])
            done = confidence >= threshold
            now = time.perf_counter()
            for j in np.flatnonzero(done):
                yield int(index[j]), {"class": int(probs[j].argmax()), "confidence": float(confidence[j]),
                                      "exit": k + 1, "macs": self.exit_macs[k], "ms": (now - start[j]) * 1e3}
            keep = np.flatnonzero(~done)
            if not len(keep):
                return
            if 2 * len(keep) < len(index):  # few go on: copy their rows now, not hold the batch's maps
                pool, rows = {m: v[keep] for m, v in pool.items()}, np.arange(len(keep))
            else:
                rows = keep
            queues[k + 1].append((index[keep], start[keep], upper[keep], pool, rows))
            waiting[k + 1] += len(keep)

        def drain(final: bool) -> Iterator[tuple[int, dict]]:
            for k in range(self.num_exits):
                while waiting[k] >= batch_size or (final and waiting[k]):
                    yield from run(k)

        seen = 0
        for x in batches:
            now = time.perf_counter()
            upper = self._upper_entry(len(x))
            queues[0].append((np.arange(seen, seen + len(x)), np.full(len(x), now),
                              np.zeros(len(x), bool) if upper is None else upper, {"image": x}, np.arange(len(x))))
            waiting[0] += len(x)
            seen += len(x)
            yield from drain(final=False)
        yield from drain(final=True)

    def _classify_one(self, x: np.ndarray, deadline_ms: float | None, upper: bool = False) -> dict:
        """One image; under a deadline, a stage starts only if this device's cost of it (an upper
        envelope of its recent runs, see :meth:`_stage_costs`) still fits, otherwise the last exit
        reached answers. ``upper``: use the latency-budget mixture's upper entry."""
        costs = None if deadline_ms is None else self._stage_costs()
        thresholds = self._mix[0] if upper else self.thresholds
        start = stage_start = time.perf_counter()
        probing = None  # the stage run to re-measure its cost although the estimate said no time
        pool = {"image": x}
        logits = None
        try:
            for k in range(self.num_exits):
                self._invoke(k, pool)
                logits = self.interpreters[k].tensor(self._logits_index[k])()[0]
                last = k == self.num_exits - 1
                # A threshold above 1 cannot be met: the exit is skipped unless it has to answer.
                answer = confidence = None
                if thresholds[k] <= 1.0:
                    answer, confidence = self._answer(k, logits)
                now = time.perf_counter()
                elapsed = (now - start) * 1e3
                if costs is not None:
                    took = (now - stage_start) * 1e3
                    if k == probing:  # a fresh cost replaces a stale one
                        costs[k] = max(took, 0.5 * costs[k]) if took > costs[k] else took
                        self._probe_outcome(k, fitted=elapsed <= deadline_ms)
                    else:  # upper envelope: halfway up to a slower run at once, down 0.2% per faster one
                        costs[k] = costs[k] + 0.5 * (took - costs[k]) if took > costs[k] else costs[k] * 0.998
                    stage_start = now
                confident = confidence is not None and confidence >= thresholds[k]
                out_of_time = costs is not None and not last and elapsed + costs[k + 1] > deadline_ms
                if out_of_time and not confident and probing is None and self._probe_due(k + 1):
                    out_of_time, probing = False, k + 1
                if confident or last or out_of_time:
                    if answer is None:
                        answer, confidence = self._answer(k, logits)
                    result = {"class": answer, "confidence": confidence, "exit": k + 1,
                              "macs": self.exit_macs[k], "ms": elapsed}
                    if costs is not None:
                        result["deadline_hit"] = bool(out_of_time and not confident)
                    return result
                self._hand_on(k, pool, copy=False)  # only an image that goes on needs the maps
        finally:
            pool.clear()  # views of the stages' buffers: gone before any stage runs again,
            logits = None  # even when a traceback keeps this frame
        raise AssertionError("unreachable")

    # Under a deadline, a stage the cost estimate rules out is never run, so its estimate could
    # never fall again: one made at a loaded moment (2.7-5.9 ms a stage, on a bundle whose whole
    # model takes 4.98 ms) kept every image at exit 1. Each such stage is therefore run anyway
    # after PROBE_AFTER_SKIPS images that skipped it, and its measured cost replaces the estimate;
    # when the probe overshoots the deadline, the wait for the next one doubles (up to
    # PROBE_MAX_WAIT), so a deadline that really is too short costs a handful of late answers.
    PROBE_AFTER_SKIPS = 16
    PROBE_MAX_WAIT = 4096

    def _probe_due(self, k: int) -> bool:
        """Counts one image that skipped stage k for time; whether stage k is due to be re-measured."""
        if self._probe_wait is None:
            self._probe_wait = [self.PROBE_AFTER_SKIPS] * self.num_exits
            self._skips = [0] * self.num_exits
        self._skips[k] += 1
        if self._skips[k] < self._probe_wait[k]:
            return False
        self._skips[k] = 0
        return True

    def _probe_outcome(self, k: int, fitted: bool) -> None:
        self._probe_wait[k] = self.PROBE_AFTER_SKIPS if fitted else min(2 * self._probe_wait[k], self.PROBE_MAX_WAIT)

    # -- latency budgets --------------------------------------------------------

    def _stage_costs(self) -> list[float]:
        """What each stage costs on this device now, for ``deadline_ms``: a list that
        :meth:`_classify_one` keeps updating from every stage it runs under a deadline.

        It starts from :meth:`cascade_timings`' ``stage_cost_ms``, which are differences of noisy
        totals and can come out near 0 (a later stage then looks free); a stage is never assumed
        cheaper than half the stage before it. Measured once, the costs also went stale: on the
        project's machines speed drifts by tens of percent within minutes, and one-off costs let
        the 99th percentile overshoot deadlines by up to 2.4x."""
        if self._stage_cost is None:
            estimate: list[float] = []
            for cost in self.cascade_timings()["stage_cost_ms"]:
                estimate.append(max(cost, 0.5 * estimate[-1]) if estimate else cost)
            self._stage_cost = estimate
        return self._stage_cost

    def cascade_timings(self, images: int = 30, cache: str | None = None) -> dict:
        """What answering at each exit costs on this device, measured once and cached.

        For every exit k, ``images`` single-image calls of :meth:`classify` with thresholds that
        make exit k answer (after 3 untimed ones), timed as :meth:`classify` times its answers:
        the stages, the softmax and the runner's own work, as a user's call pays them.
        ``exit_ms[k]``: their mean; ``stage_cost_ms[k]``: the 95th percentile of the calls answered
        at exit k less the median of those answered at exit k-1, what starting stage k may cost.
        """
        if getattr(self, "_timings", None) is not None:
            return self._timings
        cache = cache or getattr(self, "timing_cache", None)
        key = (f"{self.precision}:{self.threads}:"
               f"{self.manifest['sha256'][self.manifest['precisions'][self.precision]['stages'][0]]}")
        if cache and os.path.isfile(cache) and not os.path.islink(cache):
            try:
                with open(cache) as f:
                    stored = json.load(f)
                if stored.get("key") == key and len(stored["exit_ms"]) == self.num_exits:
                    self._timings = {"exit_ms": [float(v) for v in stored["exit_ms"]],
                                     "stage_cost_ms": [float(v) for v in stored["stage_cost_ms"]]}
                    return self._timings
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                pass  # unreadable or foreign: measured again and rewritten below
        image = np.zeros((1,) + self.input_shape, np.uint8)
        saved = self._thresholds, self._mix, self._mix_credit, self._latency
        samples = []
        try:
            for k in range(self.num_exits):
                self.thresholds = [float("inf")] * k + [float("-inf")] * (self.num_exits - k)
                for _ in range(3):
                    self.classify(image)
                samples.append([self.classify(image)[0]["ms"] for _ in range(images)])
        finally:
            self._thresholds, self._mix, self._mix_credit, self._latency = saved
        exit_ms = [float(np.mean(s)) for s in samples]
        costs = [float(np.percentile(samples[0], 95))] + [
            max(0.0, float(np.percentile(samples[k], 95) - np.median(samples[k - 1]))) for k in range(1, self.num_exits)]
        self._timings = {"exit_ms": exit_ms, "stage_cost_ms": costs}
        if cache:
            tmp = f"{cache}.tmp{os.getpid()}"
            try:
                with open(tmp, "w") as f:
                    json.dump({"key": key, **self._timings}, f)
                os.replace(tmp, cache)
            except OSError:
                pass  # a read-only bundle still runs; it measures again next time
        return self._timings

    def use_latency_budget(self, budget_ms: float, cache: str | None = None, gain: float = 0.05) -> dict:
        """Thresholds that keep the mean time per image at ``budget_ms`` on this device.

        An entry's expected latency is its validation exit shares times this device's measured
        cost of answering at each exit (:meth:`cascade_timings`). The dozen entries are often more
        than 10% apart, so the runner mixes the two around a target: the entry just below it for
        some images, the one above for the others, in the proportion whose expected mean is the
        target (images alternate deterministically, see :meth:`_upper_entry`).

        The target starts at the budget and then follows what images one at a time really take
        (:meth:`_latency_feedback`): the test images' exits differ from the validation split's,
        and this device's speed drifts (by tens of percent within minutes on the project's
        machines; heat does it on a phone), which an estimate made once cannot follow. Batches
        use the target as it stands.
        """
        if not self.manifest["thresholds"]:
            raise BundleError("a latency budget needs the bundle's fitted thresholds, and it has none (exported "
                              "with --thresholds_from none); give --thresholds or --deadline_ms instead")
        exit_ms = np.asarray(self.cascade_timings(cache=cache)["exit_ms"])

        curve = sorted(((float(np.dot(e["val_exit_shares"], exit_ms)),
                         _last_exit_answers(decode_thresholds(e["thresholds"])), e["budget_macs"])
                        for e in self.manifest["thresholds"]), key=lambda point: point[0])
        if budget_ms < curve[0][0]:
            raise BundleError(f"--latency_budget_ms {budget_ms} is below what this device needs "
                              f"for the cheapest entry (exit 1 alone takes {exit_ms[0]:.2f} ms)")
        self.thresholds = curve[0][1]
        self._latency = {"budget": budget_ms, "target": budget_ms, "curve": curve, "gain": gain}
        self._mix_credit = 0.0
        lower, upper, weight = self._aim(budget_ms)
        return {"expected_ms": min(budget_ms, curve[-1][0]), "budget_macs": lower[2], "exit_ms": exit_ms.tolist(),
                "upper_budget_macs": None if upper is None else upper[2], "upper_share": weight}

    def _aim(self, target_ms: float):
        """Sets the mixture whose expected latency is ``target_ms`` (clamped to the entries')."""
        curve = self._latency["curve"]
        lower = max((p for p in curve if p[0] <= target_ms), key=lambda p: p[0], default=curve[0])
        upper = min((p for p in curve if p[0] > target_ms), key=lambda p: p[0], default=None)
        self._thresholds = lower[1]
        if upper is None or target_ms <= lower[0]:
            self._mix = None
            return lower, None, 0.0
        weight = (target_ms - lower[0]) / (upper[0] - lower[0])
        self._mix = (upper[1], weight)
        return lower, upper, weight

    def _latency_feedback(self, measured_ms: float) -> None:
        """Moves the target by ``gain`` times the last image's miss of the budget: an integral
        controller, so the mean time per image settles at the budget wherever the entries reach it."""
        state = self._latency
        curve = state["curve"]
        state["target"] = min(max(state["target"] + state["gain"] * (state["budget"] - measured_ms), curve[0][0]),
                              curve[-1][0])
        self._aim(state["target"])


def read_image(path: str, shape) -> tuple[np.ndarray, bool]:
    """Decodes an image file into uint8 (H, W, C) under the training loader's mode rule.

    Returns the array and whether the image had to be converted to the model's channels.
    """
    try:
        from PIL import Image
    except ImportError:
        raise BundleError("reading image files needs Pillow: pip install pillow") from None
    try:
        _portable().check_regular_file(path)
        with Image.open(path) as img:
            img.load()
            array, converted = _portable().image_to_array(img, int(shape[2]))
    except _portable().ImageModeError as error:
        raise BundleError(f"{path}: {error}") from None
    except Exception as error:
        raise BundleError(f"{path}: not a readable image ({error})") from None
    if array.shape != tuple(shape):
        raise BundleError(f"{path}: image is {'x'.join(map(str, array.shape))} (HxWxC), the model takes "
                          f"{'x'.join(map(str, shape))}")
    return array, converted


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
                    if n.lower().endswith(_portable().IMAGE_EXTENSIONS) and os.path.isfile(full):
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
                   "converted": self.converted, "unreadable": self.unreadable}
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

    def _read_all(paths):
        names, images = [], []
        for path in paths:
            try:
                array, converted = read_image(path, runner.input_shape)
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


def main(argv=None) -> int:
    parser = _Parser(description="Early-exit classification with a tf_fusionnet TFLite bundle. Without "
                     "--budget, --thresholds or --latency_budget_ms every image is answered by the last exit "
                     "(no early exit). An image that cannot be read is reported on its own stderr line and "
                     "skipped; the exit status is then 1.")
    parser.add_argument("images", nargs="+", help="image files or folders (searched recursively; images in "
                        "folders named after the bundle's classes also give a top-1 accuracy)")
    parser.add_argument("--bundle", default=os.path.dirname(os.path.abspath(__file__)),
                        help="bundle folder (default: this file's folder)")
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
        print("error: " + " ".join(message.split()), file=sys.stderr, flush=True)

    try:
        args = parser.parse_args(argv)
        _positive("--budget", args.budget)
        _positive("--latency_budget_ms", args.latency_budget_ms)
        _positive("--deadline_ms", args.deadline_ms, allow_zero=True)
        if args.threads < 1 or args.batch_size < 1:
            raise BundleError("--threads and --batch_size must be integers >= 1")
        thresholds = None
        if args.thresholds:
            try:
                thresholds = [float(t) for t in args.thresholds.split(",")]
            except ValueError:
                raise BundleError(f"--thresholds must be comma-separated numbers, got {args.thresholds!r}") from None
        runner = CascadeRunner(args.bundle, args.precision, args.threads, args.budget, thresholds,
                               expect_manifest_sha256=args.expect_manifest_sha256)
        runner.timing_cache = os.path.join(args.bundle, f"latency_{args.precision}_{args.threads}t.json")
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
                print(f"{r['file']}: {r.get('label', r['class'])} ({r['confidence']:.3f}) exit {r['exit']}, "
                      f"{r['macs'] / 1e6:.2f}M MACs, {r['ms']:.2f} ms")
        if summary.count == 0:
            if failures:
                return 1
            raise BundleError("no images found (" + "/".join(e.lstrip(".") for e in _portable().IMAGE_EXTENSIONS) + ")")
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
