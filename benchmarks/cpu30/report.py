"""``results.md`` and its plots, from ``summary.json`` alone (so ``--report_only`` redraws them after
the run folders are gone)."""

from __future__ import annotations

import os

from common import percent as _pct
from cpu30.results import budgeted_entry, load_summary
from cpu30.verdicts import CHEAPER_THAN, CONTRIBUTIONS, MODEL_NAMES, cell_entries, read_all, render, seeds_text
from tf_fusionnet.evaluation.curves import (BUDGETS_M, SAME_ORDER_FACTOR, budget_curve, contribution_gain, exit_curve,
                                            interpolate, same_order_verdict, seed_mean, threshold_verdict,
                                            unpaired_bounds)

MAIN_PLOTS = ("anytime.png", "budgeted.png", "cascade_ms.png")


def plot_main(out: str, summary: dict) -> list[str]:
    """out/anytime.png, budgeted.png (main and second-seed models) and cascade_ms.png, drawn
    from summary.json alone; returns the names drawn."""
    from tf_fusionnet.evaluation.plots import plot_curves

    entries = [j for j in summary["jobs"].values() if j["phase"] in ("main", "seed")]
    presets = list(dict.fromkeys(j["preset"] for j in entries))
    # One colour per model; its second seed dashed.
    styles = [{"color": presets.index(j["preset"]), "linestyle": "--" if j["seed"] else "-"} for j in entries]
    drawn = []
    if entries:
        plot_curves(os.path.join(out, MAIN_PLOTS[0]),
                    [{"label": j["name"], "x": exit_curve(j)[0], "y": exit_curve(j)[1], **st} for j, st in zip(entries, styles)],
                    "Anytime prediction (test)")
        plot_curves(os.path.join(out, MAIN_PLOTS[1]),
                    [{"label": j["name"], "x": [p["avg_macs"] for p in j["budgeted"]],
                      "y": [p["top1"] for p in j["budgeted"]], "marker": ".", **st} for j, st in zip(entries, styles)],
                    "Budgeted batch classification (test)", xlabel="average MACs per image (M)")
        drawn += MAIN_PLOTS[:2]
    if summary.get("cascade"):
        plot_curves(os.path.join(out, MAIN_PLOTS[2]),
                    [{"label": k, "x": [p["mean_ms"] for p in v], "y": [p["top1"] for p in v]}
                     for k, v in summary["cascade"].items()],
                    "Cascade on device (1 thread, batch 1)", xlabel="mean ms per image", x_scale=1.0)
        drawn.append(MAIN_PLOTS[2])
    return drawn


def _se_range(rows) -> str:
    if not rows:
        return "-"
    errors = [100 * r["standard_error"] for r in rows]
    return f"{min(errors):.2f}-{max(errors):.2f}"


# Each model's sweep runs as soon as it finishes, so the rows come from different sessions.
CASCADE_TIMING_NOTE = ("Top-1 compares across rows; milliseconds only between rows measured in one "
                       "session: machines of one CPU name differ in speed from session to session.")


def _measured_on(info: dict | None) -> str:
    """'CPU (VNNI or not), when' for a cascade row; '-' where the sweep predates the record."""
    if not info:
        return "-"
    vnni = "VNNI" if "avx512_vnni" in info.get("simd_flags", []) else "no VNNI"
    return f"{info.get('cpu_model', '?')} ({vnni}), {info.get('at', '?')}"


def _distill_pilot(jobs: dict, chosen: dict | None) -> list[str]:
    """The distillation pilot's table (validation split only) and its choice."""
    pilots = [j for j in jobs.values() if j["phase"] == "distill_pilot"]
    if not pilots:
        return []
    lines = ["## Distillation pilot (validation split only)", "",
             "| run | alpha | T | teacher | epochs (warmup) | val top-1 mean over exits | val top-1 last exit |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {j['name']} | {j['distill_alpha']:g} | {j['distill_temperature']:g} | {j['distill_teacher']} | "
              f"{j['epochs']} ({j['warmup_epochs']}) | {_pct(j['val_top1_mean_over_exits'])} | "
              f"{_pct(j['val_top1_last_exit'])} |" for j in pilots]
    if chosen:
        plain = chosen.get("plain_recipe_val_top1_mean_over_exits")
        lines += ["", f"Chosen: alpha {chosen['alpha']:g}, T {chosen['temperature']:g}, teacher {chosen['teacher']} "
                  f"({chosen['chosen_by']}" + ("" if plain is None else
                  f"; the same model and length without distillation: {_pct(plain)} mean over exits") + ")."]
    return lines + [""]


def _table_groups(jobs: dict, baseline_preset: str | None) -> list[tuple[str, str, list[dict]]]:
    """(phase, title, entries) of each results table; the distilled runs one table per seed, so
    each is read against the MSDNet of its own seed."""
    groups = []
    for phase, title in (("main", "Main comparison"), ("ablation", "Ablation"), ("seed", "Second seed"),
                         ("seed2", "Third seed")):
        entries = [j for j in jobs.values() if j["phase"] == phase]
        if entries:
            groups.append((phase, title, entries))
    distilled = [j for j in jobs.values() if j["phase"] == "distill"]
    for seed in sorted({j["seed"] for j in distilled}):
        groups.append(("distill", f"With exit distillation, seed {seed}", [j for j in distilled if j["seed"] == seed]))
    reruns = [j for j in jobs.values() if j["phase"] == "rerun"]
    if reruns:  # beside the first runs of their seed, and the baseline's seed 0
        presets = {r["preset"] for r in reruns} | {baseline_preset}
        first = [j for j in jobs.values() if j["phase"] == "main" and j["seed"] == 0 and j["preset"] in presets]
        groups.append(("rerun", "Seed 0 again (`--rerun_seed0`: the rerun replaces the first run in the verdicts)",
                       reruns + first))
    return groups


def _paired_from_files(out: str, entries: list[dict], baseline: dict, paired: dict) -> dict:
    """Paired errors against ``baseline`` of the entries the driver did not pair (the later
    phases), from their committed per-image predictions; read only, summary.json is not changed."""
    from common import load_predictions, paired_errors_of
    from cpu30.results import PREDICTIONS

    def kept(entry):
        path = os.path.join(out, entry["name"], PREDICTIONS)
        return load_predictions(path) if os.path.exists(path) else None

    base = kept(baseline)
    found = {}
    for entry in entries:
        if entry is not baseline and not paired.get(entry["name"]) and base is not None:
            mine = kept(entry)
            if mine is not None:
                found[entry["name"]] = paired_errors_of(mine, base)
    return found


def _ge_pilot(jobs: dict, distill: dict | None) -> list[str]:
    """The gradient-equilibrium pilot's line (validation split only), beside the plain recipe."""
    pilots = [j for j in jobs.values() if j["phase"] == "ge_pilot"]
    if not pilots:
        return []
    plain = (distill or {}).get("plain_recipe_val_top1_mean_over_exits")
    lines = ["## Gradient equilibrium pilot (validation split only)", "",
             "| run | epochs (warmup) | val top-1 mean over exits | val top-1 last exit | without it, mean over exits |",
             "|---|---|---|---|---|"]
    lines += [f"| {j['name']} | {j['epochs']} ({j['warmup_epochs']}) | {_pct(j['val_top1_mean_over_exits'])} | "
              f"{_pct(j['val_top1_last_exit'])} | {'-' if plain is None else _pct(plain)} |" for j in pilots]
    return lines + ["", "One seed each: a first reading of the switch, not a verdict.", ""]


def write_report(out: str) -> str:
    """out/results.md from out/summary.json: pilot, anytime and budgeted tables, ablation, noise, verdicts."""
    from tf_fusionnet.utils import atomic_write_text

    summary = load_summary(out)
    jobs = summary["jobs"]
    for name, entry in jobs.items():  # entries written before the test-set size was kept
        path = os.path.join(out, name, "budgeted.json")
        if entry.get("phase") != "pilot" and "test_images" not in entry and os.path.exists(path):
            entry["test_images"] = budgeted_entry(path)["test_images"]
    drawn = plot_main(out, summary)
    named = [MODEL_NAMES.get(j["preset"].split("-")[0], j["preset"]) for j in jobs.values() if j["phase"] == "main"]
    title = f"{named[0]} against {' and '.join(named[1:])}" if len(named) > 1 else "FusionNet against MSDNet"
    lines = [f"# CIFAR-10, 30 epochs: {title} (issue 17)", "",
             "Written by `benchmarks/cifar10_cpu30.py` from `summary.json`; test top-1 in %, MACs per image.", ""]
    pilots = [j for j in jobs.values() if j["phase"] == "pilot"]
    if pilots:
        lines += ["## Pilot (validation split only)", "",
                  "| run | peak lr | mix prob | epochs | val top-1 mean over exits | val top-1 last exit |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {j['name']} | {j['lr']} | {j['mix_prob']} | {j['epochs']} | "
                  f"{_pct(j['val_top1_mean_over_exits'])} | {_pct(j['val_top1_last_exit'])} |" for j in pilots]
        if summary.get("recipe"):
            r = summary["recipe"]
            lines += ["", f"Chosen: peak lr {r['lr']}, mix prob {r['mix_prob']} ({r['chosen_by']})."]
        lines.append("")
    lines += _distill_pilot(jobs, summary.get("distill")) + _ge_pilot(jobs, summary.get("distill"))
    for phase, title, entries in _table_groups(jobs, summary.get("baseline_preset")):
        baseline = next((j for j in entries if j["preset"] == summary.get("baseline_preset")), entries[-1])
        paired = {**summary.get("paired", {}), **_paired_from_files(out, entries, baseline, summary.get("paired", {}))}
        lines += [f"## {title}", "", f"Differences: against `{baseline['name']}`'s curve interpolated at each "
                  "model's MACs (never extrapolated).", "",
                  "| run | epochs | exit MMACs | test top-1 per exit | minus baseline at equal MACs | "
                  + " | ".join(f"budgeted {b}M" for b in BUDGETS_M) + " | paired SE |",
                  "|---|---|---|---|---|" + "---|" * (len(BUDGETS_M) + 1)]
        bx, by = exit_curve(baseline)
        for j in entries:
            xs, ys = exit_curve(j)
            deltas = [interpolate(bx, by, x) for x in xs]
            delta_text = ", ".join("-" if d is None else f"{100 * (y - d):+.2f}" for y, d in zip(ys, deltas))
            budget = [interpolate(*budget_curve(j), b * 1e6) for b in BUDGETS_M]
            lines.append(f"| {j['name']} | {j['epochs']} | {', '.join(f'{x / 1e6:.1f}' for x in xs)} | "
                         f"{', '.join(_pct(y) for y in ys)} | {delta_text} | " + " | ".join(_pct(b) for b in budget)
                         + f" | {_se_range(paired.get(j['name']))} |")
        unpaired = [j["name"] for j in entries if j is not baseline and not paired.get(j["name"])]
        if unpaired:
            lines += ["", f"Paired SE \"-\": {', '.join(f'`{n}`' for n in unpaired)} kept no per-image test "
                      "predictions (finished before the driver kept them, run directory gone since, or its "
                      "baseline has none), so it cannot be paired; the noise below uses the pairs that can."]
        lines.append("")
        if phase == "main":
            lines += [f"![{name[:-4]}]({name})" for name in drawn if name in MAIN_PLOTS[:2]] + [""]
        if phase == "ablation" and len(entries) > 1:
            plot_ablation(out, entries)
            lines += [f"![ablation, anytime]({ABLATION_PLOT})", ""]
    cascade = summary.get("cascade", {})
    if cascade:
        measured_on = summary.get("cascade_measured_on", {})
        lines += ["## Cascade runner on the exported bundles", "",
                  "Mean ms per image (1 thread, batch 1), interpolated at the average MACs the runner measured:", "",
                  "| bundle | " + " | ".join(f"{b}M" for b in BUDGETS_M) + " | top-1 at the largest budget | measured on |",
                  "|---|" + "---|" * (len(BUDGETS_M) + 2)]
        for key, points in cascade.items():
            ms = [interpolate([p["mean_macs"] for p in points], [p["mean_ms"] for p in points], b * 1e6)
                  for b in BUDGETS_M]
            lines.append(f"| {key} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in ms)
                         + f" | {_pct(points[-1]['top1'])} | {_measured_on(measured_on.get(key))} |")
        lines += ["", CASCADE_TIMING_NOTE, "", f"![cascade]({MAIN_PLOTS[2]})", ""]
    lines += render(read_all(out, summary))
    if plot_seed_means(out, jobs):
        lines += [f"![anytime, mean over seeds]({SEED_MEANS_PLOT})", ""]
    lines += _noise_and_verdicts(summary)
    text = "\n".join(lines) + "\n"
    atomic_write_text(os.path.join(out, "results.md"), text)
    return text


ABLATION_PLOT = "ablation_anytime.png"
SEED_MEANS_PLOT = "anytime_seed_means.png"


def plot_seed_means(out: str, jobs: dict) -> bool:
    """out/anytime_seed_means.png: each model's test top-1 per exit, the mean over its 30-epoch seeds,
    with and without distillation (dashed); returns whether anything was drawn."""
    from tf_fusionnet.evaluation.plots import plot_curves

    groups = {key: list(seeds.values()) for key, seeds in cell_entries(jobs).items()}
    presets = list(dict.fromkeys(p for p, _ in groups))
    curves = []
    for (preset, distilled), runs in groups.items():
        mean = seed_mean(runs)
        name = MODEL_NAMES.get(preset.split("-")[0], preset)
        curves.append({"label": f"{name}{' distilled' if distilled else ''} ({seeds_text(mean['seeds'])})",
                       "x": exit_curve(mean)[0], "y": exit_curve(mean)[1], "color": presets.index(preset),
                       "linestyle": "--" if distilled else "-", "marker": "o"})
    if curves:
        plot_curves(os.path.join(out, SEED_MEANS_PLOT), curves, "Anytime prediction, mean over seeds (test)")
    return bool(curves)


def plot_ablation(out: str, entries: list[dict]) -> None:
    """out/ablation_anytime.png: every ablation run's test top-1 per exit against its MACs.

    Drawn from summary.json, so ``--report_only`` redraws it after the run directories are gone.
    """
    from tf_fusionnet.evaluation.plots import plot_curves

    plot_curves(os.path.join(out, ABLATION_PLOT),
                [dict(zip(("label", "x", "y"), (j["name"], *exit_curve(j)))) for j in entries],
                f"Ablation, anytime (test, {entries[0]['epochs']} epochs)")


def _noise_and_verdicts(summary: dict) -> list[str]:
    jobs = summary["jobs"]
    main = [j for j in jobs.values() if j["phase"] == "main"]
    if len(main) < 2:
        return []
    # base: MSDNet, the ablations' reference. Not the last main run: RANet finishes after it.
    base = next((j for j in main if j["preset"] == summary.get("baseline_preset")), main[-1])
    others = [j for j in main if j is not base]
    cand = next((j for j in others if j["preset"] == summary.get("candidate_preset")), others[0])
    errors = [p["standard_error"] for name, rows in summary.get("paired", {}).items()
              if jobs.get(name, {}).get("phase") in ("main", "seed") for p in rows]
    spreads = []
    for seeded in (j for j in jobs.values() if j["phase"] == "seed"):
        first = next((j for j in jobs.values() if j["phase"] in ("main", "ablation")
                      and j["preset"] == seeded["preset"] and j["seed"] == 0 and j["epochs"] == seeded["epochs"]), None)
        if first:
            spreads += [abs(a["top1"] - b["top1"]) for a, b in zip(first["anytime"], seeded["anytime"])]
    bound = [] if errors else unpaired_bounds(cand, base)
    noise = 2 * max(errors or bound or [0.0])
    if spreads:
        noise = max(noise, max(spreads))
    if errors:
        error_line = f"{100 * min(errors):.2f} to {100 * max(errors):.2f} points."
    elif bound:
        error_line = (f"not computed yet (no pair kept per-image predictions). In its place, the unpaired bound "
                      f"sqrt(p_a(1 - p_a)/n + p_b(1 - p_b)/n) of `{cand['name']}` against `{base['name']}`, exit by "
                      f"exit: {100 * min(bound):.2f} to {100 * max(bound):.2f} points. It is larger than the paired "
                      "error when the two models err on the same images, as they do: in the 10-epoch benchmark "
                      "the paired error was 0.33-0.35 points against an unpaired 0.55-0.57.")
    else:
        error_line = "not computed yet."
    lines = ["## Noise (the earlier fixed-threshold reading, issue 17, kept for reference)", "",
             "- Paired standard error of a same-exit test top-1 difference: " + error_line,
             "- Run-to-run spread (seed 0 against seed 1, same epochs, per exit): "
             + (f"up to {100 * max(spreads):.2f} points." if spreads else "not measured yet."),
             f"- A difference is read as real only beyond {100 * noise:.2f} points (the larger of two standard "
             "errors and the largest seed spread).", "", "## The paper's claims (the earlier reading, kept for reference)", ""]
    if not noise:
        return lines + ["No verdict yet: no measure of the noise (paired errors, test-set size or second seed).", ""]
    for baseline in [base] + [j for j in main if j is not base and j is not cand]:
        lines += _claims_against(cand, baseline, noise)
    means = {}
    for model in (cand, base):
        runs = [model] + [j for j in jobs.values() if j["phase"] == "seed" and j["preset"] == model["preset"]
                          and j["epochs"] == model["epochs"]]
        if len(runs) > 1:
            means[model["preset"]] = seed_mean(runs)
    if len(means) == 2:
        c, b = means[cand["preset"]], means[base["preset"]]
        lines += [f"Mean of seeds {', '.join(str(s) for s in c['seeds'])} of each model (every seed's difference "
                  "above and in the seed table; the same threshold, although the mean of two runs varies less "
                  "than one):", ""]
        lines += _claims_against(c, b, noise)
    return lines + _ablation_verdicts(jobs, cand, base, noise) + [""]


def _ablation_verdicts(jobs: dict, cand: dict, base: dict, noise: float) -> list[str]:
    runs = {j["preset"]: j for j in jobs.values() if j["phase"] == "ablation"}
    full, short_base = runs.get(cand["preset"]), runs.get(base["preset"])
    if not (full and short_base):
        return []
    refs = {"full": full, "msdnet": short_base}
    lines = [f"Ablation ({full['epochs']} epochs; gain = the model with the contribution minus the model "
             "without it, at equal MACs, mean over the exits inside the reference's cost range):", ""]
    gains = {}
    for what, preset, ref in CONTRIBUTIONS:
        if preset not in runs:
            continue
        measured = contribution_gain(runs[preset], refs[ref], removes=ref == "full")
        if measured is None:
            continue
        gain, n = measured
        gains[preset] = gain
        against = f"`{preset}` against `{refs[ref]['name']}`"
        lines.append(f"- Gain of {what} ({against}): {100 * gain:+.2f} points over {n} exits: "
                     f"{threshold_verdict(gain, noise)}.")
    lines.append("- The fusion layer and the efficient stem give gains of the same order of magnitude "
                 f"(the larger at most {SAME_ORDER_FACTOR:g}x the smaller, both beyond noise): "
                 + same_order_verdict(gains.get("fusionnet-cifar-nofusion"), gains.get("fusionnet-cifar-msdnetstem"),
                                      noise, ("the fusion layer", "the stem")) + ".")
    # The fusion layer's gain has two readings (taken out of FusionNet, put into MSDNet) and
    # they need not agree; the claim is read on both rather than on the kinder one.
    if "msdnet-cifar-fusion" in gains:
        lines.append("- The same, with the fusion layer's gain read on MSDNet (`msdnet-cifar-fusion`): "
                     + same_order_verdict(gains["msdnet-cifar-fusion"], gains.get("fusionnet-cifar-msdnetstem"),
                                          noise, ("the fusion layer", "the stem")) + ".")
    return lines


def _claims_against(cand: dict, base: dict, noise: float) -> list[str]:
    """Verdicts on the paper's claims of ``cand`` against one baseline (MSDNet or RANet)."""
    family = "ranet" if base["preset"].startswith("ranet") else "msdnet"
    name = MODEL_NAMES[family]
    share = CHEAPER_THAN[family]
    lines = [f"Against {name} (`{base['preset']}`):", ""]
    bx, by = exit_curve(base)
    cx, cy = exit_curve(cand)
    ratio = cx[-1] / bx[-1]
    last_delta = cy[-1] - by[-1]
    lines.append(f"- Last exit {100 * (1 - ratio):.1f}% cheaper than {name}'s ({cx[-1] / 1e6:.2f}M against "
                 f"{bx[-1] / 1e6:.2f}M) at {100 * last_delta:+.2f} points: "
                 f"{threshold_verdict(last_delta, noise) if ratio <= 1 - share else f'not supported (not {100 * share:.0f}% cheaper)'}.")
    window = [(x, y - interpolate(bx, by, x)) for x, y in zip(cx, cy)
              if 25e6 <= x <= 64e6 and interpolate(bx, by, x) is not None]
    if window:
        worst = min(d for _, d in window)
        lines.append("- 0.5-1 point ahead from 25M to 64M MACs: differences "
                     + ", ".join(f"{100 * d:+.2f} at {x / 1e6:.1f}M" for x, d in window)
                     + f": {threshold_verdict(worst, noise)} (read on the smallest difference).")
    budget = [(b, interpolate(*budget_curve(cand), b * 1e6), interpolate(*budget_curve(base), b * 1e6))
              for b in BUDGETS_M]
    budget = [(b, c - m) for b, c, m in budget if c is not None and m is not None]
    if budget:
        worst = min(d for _, d in budget)
        lines.append("- Budgeted ahead at every budget: " + ", ".join(f"{100 * d:+.2f} at {b}M" for b, d in budget)
                     + f": {threshold_verdict(worst, noise)} (read on the smallest difference).")
    return lines + [""]
