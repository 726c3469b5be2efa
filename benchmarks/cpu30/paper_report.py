"""``results.md`` of issue 44's comparison (``--comparison paper300``), from its ``summary.json`` alone.

What stands so far: the precision pilot and its decision, then every finished 300-epoch run with
its exits (cumulative MACs, test top-1, ECE) and its budgeted top-1 at 20-60M, beside the figures
the paper quotes. The verdicts of the paper's claims are read with the method that
docs/training.md fixed before the first long run ended, once both models of a dataset are in.
"""

from __future__ import annotations

import os

from common import percent
from cpu30.results import load_summary
from tf_fusionnet.evaluation.curves import BUDGETS_M, budget_curve, interpolate

# The paper's quoted figures (top-1, %; Section 4), keyed by dataset tag and preset.
PAPER_LAST_EXIT = {("c100", "fusionnet-cifar"): 76.3, ("c100", "msdnet-cifar-anytime"): 74.3,
                   ("c10", "fusionnet-cifar"): 94.1, ("c10", "msdnet-cifar-anytime"): 93.6}


def _tag(name: str) -> str | None:
    return next((t for t in ("c100", "c10") if f"-{t}-" in name), None)


def _pilot(summary: dict) -> list[str]:
    choice = summary.get("precision_choice")
    pilot = next((j for j in summary["jobs"].values() if j["phase"] == "precision_pilot"), None)
    if pilot is None:
        return ["## Number format (bfloat16 pilot)", "", "The pilot has not finished yet.", ""]
    lines = ["## Number format (bfloat16 pilot, validation split only)", "",
             f"`{pilot['name']}`: FusionNet, {pilot['epochs']} epochs of the 30-epoch recipe on the JPEG CIFAR-10 "
             "in bfloat16, against the 30-epoch comparison's three float32 seeds.", ""]
    if choice:
        lines += ["| validation top-1, last epoch | bfloat16 | float32 seeds | 95% prediction interval | inside |",
                  "|---|---|---|---|---|"]
        for key, check in choice["checks"].items():
            label = "mean over exits" if key.endswith("mean_over_exits") else "last exit"
            seeds = ", ".join(percent(v) for v in check["float32_seeds"])
            low, high = check["interval"]
            lines.append(f"| {label} | {percent(check['bfloat16'])} | {seeds} | {percent(low)}-{percent(high)} | "
                         f"{'yes' if check['within'] else 'no'} |")
        decided = ("bfloat16 where the CPU has it natively (`--precision machine`), float32 elsewhere"
                   if choice["precision"] == "machine" else "float32")
        lines += ["", f"Rule, fixed before the pilot ran: {choice['rule']}. Decision: the long runs train in {decided}.",
                  ""]
    return lines


def _run_table(entry: dict) -> list[str]:
    tag = _tag(entry["name"])
    paper = PAPER_LAST_EXIT.get((tag, entry["preset"]))
    lines = [f"### {entry['name']}", "",
             f"{entry['epochs']} epochs, batch {entry.get('batch') or '-'}, seed {entry['seed']}, "
             f"{entry['train_seconds'] / 3600:.1f} h of training.", "",
             "| exit | cumulative MACs (M) | test top-1 | ECE |", "|---|---|---|---|"]
    lines += [f"| {e['exit']} | {e['macs'] / 1e6:.1f} | {percent(e['top1'])} | {e.get('ece', float('nan')):.3f} |"
              for e in entry["anytime"]]
    if paper is not None:
        last = 100 * entry["anytime"][-1]["top1"]
        lines += ["", f"Last exit: {last:.2f}% against the paper's {paper:.1f}% ({last - paper:+.2f} points)."]
    xs, ys = budget_curve(entry)
    budgeted = [(b, interpolate([x / 1e6 for x in xs], ys, b)) for b in BUDGETS_M]
    lines += ["", "Budgeted top-1 (test; thresholds fitted on the validation split): "
              + ", ".join(f"{b}M {percent(v) if v is not None else 'out of range'}" for b, v in budgeted), ""]
    return lines


def write_paper_report(out: str) -> str:
    summary = load_summary(out)
    lines = ["# The paper's regime on the paper's data (issue 44)", "",
             "Made by `python benchmarks/cifar10_cpu30.py --comparison paper300 --commit`; "
             "`--status` shows where every run stands.", ""]
    lines += _pilot(summary)
    runs = [j for j in summary["jobs"].values() if j["phase"] != "precision_pilot"]
    lines += ["## Finished 300-epoch runs", ""] + (["None yet.", ""] if not runs else [])
    for entry in runs:
        lines += _run_table(entry)
    text = "\n".join(lines)
    from tf_fusionnet.utils import atomic_write_text

    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "results.md"), text + "\n")
    return text
