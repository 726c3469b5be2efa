"""The bundle format: the manifest's schema, the rules every bundle path follows, and the check of
every stage file against the manifest. The writer (``tf_fusionnet.export.bundle``) validates what it
writes with the same :func:`validate_manifest`, so the schema is stated once."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat

from .portable import RESIZE_MODES, sha256_file


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


class BundleError(Exception):
    """A bundle, an image or an argument the runner cannot use; the message is for the user."""


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
    if manifest["input"].get("resize", RESIZE_MODES[0]) not in RESIZE_MODES:
        _fail("input.resize", f"must be one of {', '.join(RESIZE_MODES)}")
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
    web = manifest.get("web")  # the web page's stages (export --web); absent in other bundles
    if web is not None:
        web_precisions = web.get("precisions") if isinstance(web, dict) else None
        if not isinstance(web_precisions, dict) or not web_precisions:
            _fail("web.precisions", "must be a non-empty object")
        for name, entry in web_precisions.items():
            stages = entry.get("stages") if isinstance(entry, dict) else None
            if not (isinstance(stages, list) and len(stages) == k and all(is_bundle_name(f) for f in stages)):
                _fail(f"web.precisions.{name}.stages", f"must be a list of {k} file names inside the bundle")
            if entry.get("stage_io_dtype", "float32") != "float32":
                _fail(f"web.precisions.{name}.stage_io_dtype", "must be float32 (LiteRT.js takes no int8 tensors)")
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
    except RecursionError:  # brackets nested thousands deep: json's recursion, before any key is read
        raise BundleError(f"{path}: JSON nested too deeply to be a manifest") from None
    validate_manifest(manifest)
    return manifest


# The runtime's own files in a bundle, checked against the manifest like the stages: the entry
# script and the package beside it (format 4 bundles before the package had the runner in one
# file, with portable.py beside it; only the files a manifest lists are checked).
RUNTIME_FOLDER = "tf_fusionnet_runtime"
RUNTIME_MODULES = ("__init__.py", "cli.py", "confidence.py", "latency.py", "manifest.py", "portable.py",
                   "quantization.py", "runner.py", "serve.py", "server.py", "stages.py")
RUNTIME_FILES = ("cascade_runner.py", "portable.py") + tuple(f"{RUNTIME_FOLDER}/{m}" for m in RUNTIME_MODULES)


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
