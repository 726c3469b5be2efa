"""The model card of a trained preset (issue 45), from a finished and evaluated run folder.

What a user of a shipped preset needs to know before trusting it: the data (and its sha256), the
recipe and the commit it was trained at, how long and on what CPU, every exit's test top-1, ECE
and cumulative MACs, budgeted top-1 at 20/40/60M, and what it is not. :func:`model_card` gathers
it (a dict for ``metadata.json``), :func:`card_markdown` writes it for people.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from tf_fusionnet.runtime.portable import sha256_file as file_sha256

CARD_BUDGETS_M = (20, 40, 60)
LIMITS = ("Trained on CIFAR's 32x32 images of its classes only: it knows no other class, and a photo of "
          "anything else still gets one of these labels. Larger images are centre-cropped and shrunk to "
          "32x32, so detail is lost. No claim of robustness (corruptions, adversarial inputs, other "
          "distributions) is made or measured.")




def _interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    import numpy as np

    points = sorted(points)
    if not points or x < points[0][0] or x > points[-1][0]:
        return None
    return float(np.interp(x, [p[0] for p in points], [p[1] for p in points]))


def model_card(run_dir: str, name: str, data_path: str | None = None) -> dict[str, Any]:
    """The card of ``run_dir`` (train.py's folder, after evaluate.py): a dict for metadata.json.

    Args:
        run_dir: the run folder (config.json, log.csv, eval/anytime.json, eval/budgeted.json).
        name: the preset's name.
        data_path: the dataset file the run trained on, to record its sha256 (default: the run's
            ``--dataset`` where that is a file).
    """
    from tf_fusionnet.utils import read_json_limited

    from tf_fusionnet.runs.reading import eval_results

    config = read_json_limited(os.path.join(run_dir, "config.json"))
    checkpoint = os.path.join(run_dir, "model.keras")
    anytime = eval_results(run_dir, "anytime", checkpoint)
    budgeted = eval_results(run_dir, "budgeted", checkpoint)
    if anytime is None or budgeted is None:
        raise ValueError(f"{run_dir}/eval: no results of the run's model.keras (evaluate.py measured another "
                         f"checkpoint, or has not run): python evaluate.py --run {run_dir}")
    with open(os.path.join(run_dir, "log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    train = config["train"]
    data_path = data_path or train.get("dataset")
    exits = anytime["exits"]
    curve = [(p["avg_macs"], p["top1"]) for p in budgeted["points"]]
    curve += [(exits[0]["macs"], exits[0]["top1"]), (exits[-1]["macs"], exits[-1]["top1"])]
    cpus = sorted({r["cpu_model"] for r in rows if r.get("cpu_model")})
    precisions = sorted({r["precision"] for r in rows if r.get("precision")})
    return {
        "name": name,
        "data": {"source": data_path, "sha256": file_sha256(data_path) if data_path and os.path.isfile(data_path)
                 else None, "num_classes": config["num_classes"], "train_images": config["num_train_images"],
                 "validation_images": config["num_val_images"], "test_images": config["num_test_images"]},
        "recipe": {k: train[k] for k in ("epochs", "batch_size", "lr", "warmup_epochs", "lr_schedule", "momentum",
                                         "weight_decay", "weight_decay_style", "label_smoothing", "mix_prob",
                                         "random_crop", "flip", "seed") if k in train}
                   | ({"warmup_epochs": config["warmup_epochs"]} if "warmup_epochs" in config else {}),
        "trained_at_commit": config.get("git_commit"),
        "training": {"epochs_logged": len(rows),
                     "hours": round(sum(float(r["epoch_seconds"]) for r in rows if r.get("epoch_seconds")) / 3600, 2),
                     "cpus": cpus or ["not recorded"], "precisions": precisions or [config.get("precision")]},
        "test": {"exits": [{"exit": e["exit"], "cumulative_macs": e["macs"], "top1": e["top1"], "top5": e.get("top5"),
                            "ece": e.get("ece")} for e in exits],
                 "budgeted_top1": {f"{m}M": _interpolate(curve, m * 1e6) for m in CARD_BUDGETS_M}},
        "limitations": LIMITS,
    }


def card_markdown(card: dict[str, Any]) -> str:
    """The card as a short markdown page (``NAME.md`` beside the preset folder)."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    data, training, test = card["data"], card["training"], card["test"]
    lines = [f"# {card['name']}", "",
             f"Data: `{os.path.basename(str(data['source']))}` (sha256 `{data['sha256']}`), {data['num_classes']} "
             f"classes, {data['train_images']:,} training / {data['validation_images']:,} validation / "
             f"{data['test_images']:,} test images.", "",
             "Recipe: " + ", ".join(f"{k} {v}" for k, v in card["recipe"].items()) + ".", "",
             f"Trained at commit `{card['trained_at_commit']}`: {training['epochs_logged']} epochs, "
             f"{training['hours']} hours on {', '.join(training['cpus'])} ({', '.join(map(str, training['precisions']))}).",
             "", "| exit | cumulative MACs (M) | test top-1 | top-5 | ECE |", "|---|---|---|---|---|"]
    lines += [f"| {e['exit']} | {e['cumulative_macs'] / 1e6:.1f} | {pct(e['top1'])} | {pct(e['top5'])} | "
              f"{'-' if e['ece'] is None else format(e['ece'], '.3f')} |" for e in test["exits"]]
    lines += ["", "Budgeted top-1 (test; thresholds fitted on the validation split): "
              + ", ".join(f"{k} {pct(v)}" for k, v in test["budgeted_top1"].items()) + ".", "",
              f"What it is not: {card['limitations']}", ""]
    return "\n".join(lines)


def index_entry(card: dict[str, Any], preset_dir: str, model_class: str, description: str) -> dict[str, Any]:
    """The entry of ``pretrained/index.json`` for a shipped preset: what ``summary --list`` shows,
    and the sha256 of its files (checked by the tests: a promise of weights is kept)."""
    exits = card["test"]["exits"]
    return {"class": model_class, "description": description, "data": os.path.basename(str(card["data"]["source"])),
            "num_classes": card["data"]["num_classes"],
            "first_exit": {"top1": exits[0]["top1"], "macs": exits[0]["cumulative_macs"]},
            "last_exit": {"top1": exits[-1]["top1"], "macs": exits[-1]["cumulative_macs"]},
            "files": {n: file_sha256(os.path.join(preset_dir, n)) for n in sorted(os.listdir(preset_dir))}}


__all__ = ["card_markdown", "index_entry", "model_card"]

