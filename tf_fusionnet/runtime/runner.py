"""The cascade: each image goes through the stages until an exit is confident enough."""

from __future__ import annotations

import math
import time

import numpy as np

from . import portable
from .confidence import _last_exit_answers
from .latency import LatencyControl
from .manifest import (RUNTIME_FILES, BundleError, decode_thresholds, entry_for_budget, load_manifest, reads_pixels,
                       verify_files)
from .quantization import quantize
from .server import ServerMode
from .stages import StageChain


# Stage calls of one classify(batch): large enough for LiteRT's batched kernels, small enough that
# the padding at the end of a batch costs little.
CLASSIFY_BATCH = 32


class CascadeRunner(StageChain, LatencyControl, ServerMode):
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
        web: run the bundle's web stages (``export --web``: batch 1, float32 between stages),
            which the page runs in a browser; here to check them against the other stages.
    """

    def __init__(self, bundle: str, precision: str = "float32", threads: int = 1,
                 budget: float | None = None, thresholds=None, expect_manifest_sha256: str | None = None,
                 web: bool = False):
        self.bundle = bundle
        self.manifest = load_manifest(bundle, expect_manifest_sha256)
        verify_files(bundle, self.manifest, [n for n in RUNTIME_FILES if n in self.manifest["sha256"]])
        entries = self.manifest["precisions"]
        if web:
            if "web" not in self.manifest:
                raise BundleError(f"{bundle}: no web stages (export the run with --web)")
            entries = self.manifest["web"]["precisions"]
        if precision not in entries:
            raise BundleError(f"precision {precision!r} not in the bundle{'s web stages' if web else ''} "
                              f"(has {', '.join(entries)})")
        self.precision = precision
        self.precision_entry = entries[precision]
        self.threads = threads
        self.timing_cache: str | None = None  # where cascade_timings() keeps its measurement
        self._mix: tuple[list[float], float] | None = None  # use_latency_budget's upper entry, weight
        self._mix_credit = 0.0
        self._latency: dict | None = None  # use_latency_budget's budget, target and entry curve
        self._stage_cost: list[float] | None = None  # deadline_ms's per-stage cost envelope
        self._probe_wait: list[int] | None = None  # deadline_ms: skips before each stage is re-measured
        self._timings: dict | None = None
        files = self.precision_entry["stages"]
        verify_files(bundle, self.manifest, files)
        self.exit_macs = [float(m) for m in self.manifest["exit_macs"]]
        # The bundle's exit k is the model's exit model_exits[k-1] (a bundle may keep some exits only).
        self.model_exits = list(self.manifest.get("model_exits", range(1, len(files) + 1)))
        self.input_shape = tuple(self.manifest["input"]["shape"])
        self.resize = self.manifest["input"].get("resize", portable.DEFAULT_RESIZE)  # absent before format 6
        # LiteRT prints "Created TensorFlow Lite XNNPACK delegate" on fd 2 when it loads and first
        # runs a model; one chained warm-up pass here keeps that (and first-call latency) out of use.
        self.reads_pixels = reads_pixels(self.manifest)
        with portable.captured_stderr_fd((BundleError,)):
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
