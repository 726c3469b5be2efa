"""The comparison's claims, read with :mod:`tf_fusionnet.evaluation.compare` (issue 33).

Every figure is recomputed from what the driver commits under ``--out``: a run's ``logits.npz``
(float32 test logits: exact) or else its ``test_predictions.npz`` (float16 confidences: a few
images in 10,000 change exit at a threshold, which moves a budgeted top-1 by at most 0.01
points), the thresholds its evaluation fitted on the validation split (``budgeted.json``), and,
for a run that kept neither (FusionNet's first seed 0, until its rerun replaces it), its
accuracies in ``summary.json``: such a pair counts in the estimate and the spread between seeds,
not in the per-image error.

Seeds pair by number (FusionNet seed s with MSDNet seed s; a distilled run with the undistilled
run of its seed). Points: each exit of the first model (the other's curve interpolated at its
MACs, never extrapolated), each budget, and the summaries fixed before the runs: the mean of the
curve over the paper's 25-64M (for FusionNet against a baseline) and the mean over the exits (for
a distillation gain). Within each table the per-point verdicts are Holm-corrected together.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import numpy as np

from tf_fusionnet.evaluation.compare import (Estimate, budget_curve_scores, format_estimate, paired_estimate,
                                             scores_at_cost, scores_over_range, verdicts)
from tf_fusionnet.evaluation.curves import BUDGETS_M, budget_curve, exit_curve, interpolate
from tf_fusionnet.exits import softmax

RANGE_M = (25, 64)  # the paper: "0.5-1 point ahead from 25M to 64M MACs"
# The models compared, unless summary.json names them (candidate_preset, baseline_preset).
CANDIDATE, BASELINE = "fusionnet-cifar", "msdnet-cifar-anytime"
MODEL_NAMES = {"fusionnet": "FusionNet", "msdnet": "MSDNet", "ranet": "RANet"}  # by preset prefix
# What the paper claims of FusionNet's last exit against each baseline's (CIFAR-10, anytime):
# "32% fewer FLOPs than RANet's 93.8% last classifier, and 15% fewer FLOPs than MSDNet's 93.6%".
CHEAPER_THAN = {"msdnet": 0.15, "ranet": 0.32}
# Each ablation preset removes one contribution from its reference (or adds the fusion layer to
# MSDNet); the contribution's gain is the reference minus the ablation at equal MACs.
CONTRIBUTIONS = (
    ("the fusion layer", "fusionnet-cifar-nofusion", "full"),
    ("the efficient stem (with the width it pays for)", "fusionnet-cifar-msdnetstem", "full"),
    ("the paper's transition", "fusionnet-cifar-msdnettransition", "full"),
    ("the fusion layer added to MSDNet", "msdnet-cifar-fusion", "msdnet"),
)
VERDICTS_FILE = "verdicts.json"
# Each one-sided test at 2.5%, the level of a 95% interval's one side; Holm over a table's points
# then makes some verdicts stricter than their unadjusted intervals.
ALPHA = 0.025

Score = np.ndarray | float | None  # per-image scores, an accuracy (no per-image file), or not covered


@dataclasses.dataclass
class Run:
    """One finished run: its exits' MACs and, where kept, every test image's correctness."""

    entry: dict
    correct: np.ndarray | None = None  # (K, N) per exit
    budget_macs: np.ndarray | None = None  # (P,) the budgeted curve's points
    budget_correct: np.ndarray | None = None  # (P, N)
    labels: np.ndarray | None = None

    @property
    def macs(self) -> list[float]:
        return exit_curve(self.entry)[0]

    def at_exit(self, k: int) -> Score:
        return self.correct[k].astype(np.float64) if self.correct is not None else self.entry["anytime"][k]["top1"]

    def at_cost(self, cost: float) -> Score:
        if self.correct is not None:
            return scores_at_cost(self.correct, self.macs, cost)
        return interpolate(*exit_curve(self.entry), cost)

    def at_budget(self, budget: float) -> Score:
        if self.budget_correct is not None:
            return scores_at_cost(self.budget_correct, self.budget_macs, budget)
        return interpolate(*budget_curve(self.entry), budget)

    def over_range(self, low: float, high: float) -> Score:
        if self.correct is not None:
            return scores_over_range(self.correct, self.macs, low, high)
        values = [interpolate(*exit_curve(self.entry), c) for c in np.linspace(low, high, 64)]
        return None if any(v is None for v in values) else float(np.mean(values))

    def mean_over_exits(self) -> Score:
        if self.correct is not None:
            return self.correct.mean(axis=0)
        return float(np.mean(exit_curve(self.entry)[1]))


def load_run(out: str, entry: dict) -> Run:
    """A run's per-image test correctness from its committed files (see the module docstring)."""
    folder = os.path.join(out, entry["name"])
    if os.path.exists(os.path.join(folder, "logits.npz")):
        with np.load(os.path.join(folder, "logits.npz")) as stored:
            probs, labels = softmax(stored["test_logits"]), stored["test_labels"]
        confidence, predicted = probs.max(-1), probs.argmax(-1)
    elif os.path.exists(os.path.join(folder, "test_predictions.npz")):
        with np.load(os.path.join(folder, "test_predictions.npz")) as stored:
            confidence, predicted, labels = stored["confidence"], stored["predicted"], stored["labels"]
    else:
        return Run(entry)
    labels = np.asarray(labels, dtype=np.int64)
    run = Run(entry, (predicted == labels[None]).astype(np.float64), labels=labels)
    if os.path.exists(os.path.join(folder, "budgeted.json")):  # else its budgets come from summary.json
        with open(os.path.join(folder, "budgeted.json")) as f:
            thresholds = [p["thresholds"] for p in json.load(f)["points"]]
        run.budget_macs, run.budget_correct = budget_curve_scores(confidence, predicted, labels, thresholds,
                                                                  exit_curve(entry)[0])
    return run


def estimate(point: Callable[[Run], Score], a: list[Run], b: list[Run]) -> Estimate | None:
    """A - B at ``point`` over the seed pairs (None where a model does not cover it or no pair
    kept per-image files)."""
    for x, y in zip(a, b):
        if x.labels is not None and y.labels is not None and not np.array_equal(x.labels, y.labels):
            raise ValueError(f"{x.entry['name']} and {y.entry['name']} were tested on different images")
    sa, sb = [point(r) for r in a], [point(r) for r in b]
    if any(s is None for s in sa + sb) or not any(np.ndim(x) and np.ndim(y) for x, y in zip(sa, sb)):
        return None
    return paired_estimate(sa, sb)


class Pooled:
    """The seeds of one model that kept per-image files, read as one: each image's score is its
    mean over them (to read a model's seeds against the one seed of a baseline)."""

    def __init__(self, runs: list[Run]):
        self.runs = [r for r in runs if r.correct is not None] or runs[:1]
        self.entry, self.labels, self.macs = self.runs[0].entry, self.runs[0].labels, self.runs[0].macs
        self.entry = {**self.entry, "seed": [r.entry["seed"] for r in self.runs]}

    def _mean(self, method: str, *args) -> Score:
        scores = [getattr(r, method)(*args) for r in self.runs]
        return None if any(s is None for s in scores) else np.mean(scores, axis=0)

    def at_exit(self, k: int) -> Score:
        return self._mean("at_exit", k)

    def at_cost(self, cost: float) -> Score:
        return self._mean("at_cost", cost)

    def at_budget(self, budget: float) -> Score:
        return self._mean("at_budget", budget)

    def over_range(self, low: float, high: float) -> Score:
        return self._mean("over_range", low, high)


COMPARED_PHASES = ("main", "seed", "seed2", "distill", "rerun")


def cell_entries(jobs: dict) -> dict[tuple[str, bool], dict[int, dict]]:
    """(preset, distilled) -> seed -> summary entry, over the runs as long as the main ones.

    A ``rerun`` (the same preset and seed trained again because the first run's per-image
    predictions were lost) takes its first run's place, whatever either scored: the rule was
    fixed before the rerun trained, so no choice between two draws of one seed is made on results.
    """
    found: dict = {}
    epochs = {j["epochs"] for j in jobs.values() if j["phase"] == "main"}
    for entry in jobs.values():
        if entry["phase"] not in COMPARED_PHASES or entry["epochs"] not in epochs:
            continue
        cell = found.setdefault((entry["preset"], entry["phase"] == "distill"), {})
        if entry["phase"] == "rerun" or cell.get(entry["seed"], {}).get("phase") != "rerun":
            cell[entry["seed"]] = entry
    return found


def cells(out: str, summary: dict) -> dict[tuple[str, bool], dict[int, Run]]:
    """:func:`cell_entries` with each run's per-image files loaded."""
    return {key: {seed: load_run(out, entry) for seed, entry in seeds.items()}
            for key, seeds in cell_entries(summary["jobs"]).items()}


def _family(points: dict[str, Callable[[Run], Score]], a: list[Run], b: list[Run], margin: float = 0.0) -> dict:
    estimates = {name: est for name, point in points.items() if (est := estimate(point, a, b)) is not None}
    read = verdicts(estimates, margin, alpha=ALPHA) if estimates else {}
    return {name: {**read[name], "estimate": est.to_dict()} for name, est in estimates.items()}


def _seed_list(runs: list) -> list[int]:
    seeds = [r.entry["seed"] for r in runs]
    return [s for seed in seeds for s in (seed if isinstance(seed, list) else [seed])]


def compare_models(a: list[Run], b: list[Run]) -> dict:
    """The paper's claims and every point of A against baseline B (each a list of seeds, paired)."""
    family = "ranet" if b[0].entry["preset"].startswith("ranet") else "msdnet"
    share = CHEAPER_THAN[family]
    cost_a, cost_b = a[0].macs[-1], b[0].macs[-1]
    # The paper's range, ending at A's last exit where it ends below 64M (FusionNet's is 63.1M).
    low, high = RANGE_M[0] * 1e6, min(RANGE_M[1] * 1e6, a[0].macs[-1])
    points = {f"exit {k + 1} ({c / 1e6:.1f}M)": (lambda r, c=c: r.at_cost(c)) for k, c in enumerate(a[0].macs)}
    points.update({f"budget {m}M": (lambda r, m=m: r.at_budget(m * 1e6)) for m in BUDGETS_M})
    result = {"seeds": _seed_list(a), "baseline_seeds": _seed_list(b),
              "points": _family(points, a, b)}
    last = _family({"last exits": lambda r: r.at_exit(-1)}, a, b)
    cheaper = 1 - cost_a / cost_b
    claims = {f"last exit {100 * share:.0f}% cheaper and more accurate "
              f"({100 * cheaper:.1f}% cheaper: {cost_a / 1e6:.1f}M against {cost_b / 1e6:.1f}M)":
              {**last["last exits"], **({} if cheaper >= share else {"verdict": "not supported"})} if last else None}
    ahead = _family({"mean": lambda r: r.over_range(low, high)}, a, b, margin=0.005)
    claims[f"0.5-1 point ahead from {RANGE_M[0]}M to {RANGE_M[1]}M (mean of the curve over "
           f"{low / 1e6:.0f}-{high / 1e6:.1f}M; margin 0.5)"] = ahead.get("mean")
    budgets = {name: v for name, v in result["points"].items() if name.startswith("budget")}
    if budgets:
        said = [v["verdict"] for v in budgets.values()]
        verdict = ("supported" if all(v == "supported" for v in said) else
                   "not supported" if "not supported" in said else "undecided")
        claims["budgeted ahead at every budget (each budget's verdict, Holm over the table's twelve points)"] = {
            "verdict": verdict, "estimates": {k: v["estimate"] for k, v in budgets.items()}}
    result["claims"] = claims
    return result


def distillation_gain(distilled: list[Run], plain: list[Run]) -> dict:
    """Distilled minus undistilled, per exit, per budget, and the mean over the exits."""
    points = {f"exit {k + 1} ({c / 1e6:.1f}M)": (lambda r, k=k: r.at_exit(k)) for k, c in enumerate(plain[0].macs)}
    points.update({f"budget {m}M": (lambda r, m=m: r.at_budget(m * 1e6)) for m in BUDGETS_M})
    return {"seeds": [r.entry["seed"] for r in distilled], "points": _family(points, distilled, plain),
            "mean over the exits": _family({"mean": lambda r: r.mean_over_exits()}, distilled, plain).get("mean")}


def ablation_exits(jobs: dict, out: str, candidate: str = CANDIDATE, baseline: str = BASELINE) -> dict:
    """Per 10-epoch ablation, the contribution's gain at each exit (one seed: the per-image error
    only), Holm over its exits."""
    runs = {j["preset"]: j for j in jobs.values() if j["phase"] == "ablation"}
    refs = {"full": runs.get(candidate), "msdnet": runs.get(baseline)}
    found = {}
    loaded: dict[str, Run] = {}  # a reference serves several contributions: read its files once

    def kept(entry: dict) -> Run:
        if entry["name"] not in loaded:
            loaded[entry["name"]] = load_run(out, entry)
        return loaded[entry["name"]]

    for what, preset, ref in CONTRIBUTIONS:
        if preset not in runs or refs[ref] is None:
            continue
        ablated, reference = kept(runs[preset]), kept(refs[ref])
        with_it, without = ([reference], [ablated]) if ref == "full" else ([ablated], [reference])
        points = {f"{c / 1e6:.1f}M": (lambda r, c=c: r.at_cost(c)) for c in ablated.macs}
        read = _family(points, with_it, without)
        if read:
            found[preset] = {"what": what, "reference": refs[ref]["name"], "points": read,
                             "epochs": runs[preset]["epochs"], "warmup_epochs": runs[preset].get("warmup_epochs")}
    return found


def read_all(out: str, summary: dict) -> dict:
    """Every comparison the runs so far allow, written to out/verdicts.json."""
    from tf_fusionnet.utils import atomic_write_text

    found = cells(out, summary)
    candidate = summary.get("candidate_preset", CANDIDATE)
    baseline = summary.get("baseline_preset", BASELINE)
    result: dict = {"models": {}, "distillation": {}}
    for distilled in (False, True):
        a, b = found.get((candidate, distilled), {}), found.get((baseline, distilled), {})
        seeds = sorted(set(a) & set(b))
        if seeds:
            result["models"][f"FusionNet - MSDNet{', both distilled' if distilled else ''}"] = compare_models(
                [a[s] for s in seeds], [b[s] for s in seeds])
    ranet = next((runs for (preset, distilled), runs in found.items()
                  if preset.startswith("ranet") and not distilled), {})
    if ranet and found.get((candidate, False)):
        result["models"]["FusionNet (mean of its seeds) - RANet"] = compare_models(
            [Pooled(list(found[(candidate, False)].values()))], [ranet[min(ranet)]])
    result["models"] = {k: v for k, v in result["models"].items() if v["points"]}  # nothing kept per image
    for preset in (candidate, baseline):
        d, p = found.get((preset, True), {}), found.get((preset, False), {})
        seeds = sorted(set(d) & set(p))
        if seeds:
            result["distillation"][preset] = distillation_gain([d[s] for s in seeds], [p[s] for s in seeds])
    result["ablation"] = ablation_exits(summary["jobs"], out, candidate, baseline)
    atomic_write_text(os.path.join(out, VERDICTS_FILE), json.dumps(result, indent=1, allow_nan=False) + "\n")
    return result


def _cell(read: dict | None) -> str:
    if not read:
        return "- | not measured"
    if "estimate" not in read:
        return "see the budgets | " + read["verdict"]
    return f"{format_estimate(Estimate(**read['estimate']))} | {read['verdict']}"


def seeds_text(seeds: list[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


ONE_PAIR = "; one seed pair: the interval holds the per-image error, not the spread between seeds"


def render(result: dict) -> list[str]:
    """The results.md section: claims, then every point, then the ablation's exits (nothing where
    no run kept per-image files)."""
    if not (result["models"] or result["distillation"] or result["ablation"]):
        return []
    lines = ["## Verdicts over seeds and test images (issue 33)", "",
             "Read with `tf_fusionnet/evaluation/compare.py` from the committed per-image files "
             f"(`{VERDICTS_FILE}` holds every estimate). Each figure is A minus B in points, the mean over the "
             "seed pairs, with a 95% t interval whose error combines the spread between seeds and the "
             "per-image error. A claim is tested one-sided against its margin at 2.5%, and the points of one "
             "table (seven exits, five budgets) are Holm-corrected together, so a point whose unadjusted "
             "interval excludes the margin can still be undecided. "
             "*Supported*: the test that A - B exceeds the margin rejects; *not supported*: the test that it "
             "falls short rejects; *undecided*: neither.", ""]
    for title, read in result["models"].items():
        lines += [f"### {title} ({seeds_text(read['seeds'])}"
                  + ("" if read["baseline_seeds"] == read["seeds"] else f" against {seeds_text(read['baseline_seeds'])}")
                  + (ONE_PAIR if len(read["baseline_seeds"]) == 1 else "") + ")", "",
                  "| claim | estimate [95% interval] | verdict |", "|---|---|---|"]
        lines += [f"| {claim} | {_cell(v)} |" for claim, v in read["claims"].items()]
        lines += ["", "| point (margin 0) | estimate [95% interval] | verdict |", "|---|---|---|"]
        lines += [f"| {name} | {_cell(v)} |" for name, v in read["points"].items()] + [""]
    for preset, read in result["distillation"].items():
        if not read["points"]:
            lines += [f"### Distillation gain of {preset}", "",
                      f"Not measured yet: of {seeds_text(read['seeds'])}, no pair kept per-image files on both sides "
                      "(the undistilled seed 0 of FusionNet kept none).", ""]
            continue
        lines += [f"### Distillation gain of {preset} (distilled minus undistilled, {seeds_text(read['seeds'])}"
                  + (ONE_PAIR if len(read["seeds"]) == 1 else "") + ")", "",
                  "| point (margin 0) | estimate [95% interval] | verdict |", "|---|---|---|",
                  f"| mean over the exits | {_cell(read['mean over the exits'])} |"]
        lines += [f"| {name} | {_cell(v)} |" for name, v in read["points"].items()] + [""]
    if result["ablation"]:
        first = next(iter(result["ablation"].values()))
        warmup = "" if first.get("warmup_epochs") is None else f", {first['warmup_epochs']:g} warmup epoch(s)"
        lines += [f"### Ablation, exit by exit ({first['epochs']} epochs{warmup}, one seed each: the per-image "
                  "error only)", "",
                  "Gain of the contribution at each of the ablation's exits (with it minus without it, the "
                  "other curve interpolated); the exits where it moves beyond the per-image noise (margin 0: "
                  "*supported*, the contribution gains there; *not supported*, it costs accuracy there):", ""]
        for preset, read in result["ablation"].items():
            moved = [f"{name} {_cell(v).replace(' | ', ' ')}" for name, v in read["points"].items()
                     if v["verdict"] != "undecided"]
            lines.append(f"- {read['what']} (`{preset}` against `{read['reference']}`): "
                         + ("; ".join(moved) if moved else "no exit beyond noise") + ".")
        lines.append("")
    return lines
