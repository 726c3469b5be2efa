"""Latency budgets and deadlines: what each exit costs on this device, and keeping to it."""

from __future__ import annotations

import json
import os

import numpy as np

from . import portable
from .confidence import _last_exit_answers
from .manifest import BundleError, decode_thresholds


class LatencyControl:
    """Time on this device: the latency budget's mixture of entries and its controller, and the
    deadline's per-stage cost estimates. A part of :class:`~.runner.CascadeRunner`."""

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
        key = (f"{self.precision}:{self.threads}:{portable.machine_key()}:"
               f"{self.manifest['sha256'][self.manifest['precisions'][self.precision]['stages'][0]]}")
        if cache and os.path.isfile(cache) and not os.path.islink(cache) and os.path.getsize(cache) < 1 << 16:
            try:
                with open(cache) as f:
                    stored = json.load(f)
                if stored.get("key") == key and len(stored["exit_ms"]) == self.num_exits:
                    self._timings = {"exit_ms": [float(v) for v in stored["exit_ms"]],
                                     "stage_cost_ms": [float(v) for v in stored["stage_cost_ms"]]}
                    return self._timings
            except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
                pass  # unreadable, foreign or another machine's: measured again and rewritten below
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
