"""Accuracy-against-cost plots (PNG), one line per model."""

from __future__ import annotations

from typing import Sequence

from tf_fusionnet.utils import atomic_path


def plot_curves(
    path: str,
    curves: Sequence[dict],
    title: str,
    xlabel: str = "MACs per image (M)",
    ylabel: str = "top-1 accuracy (%)",
    x_scale: float = 1e6,
) -> None:
    """Writes a PNG of several (x, accuracy) curves.

    Args:
        curves: dicts with ``label``, ``x`` (raw units, divided by ``x_scale``)
            and ``y`` (fractions, shown in percent); optional ``marker``, ``linestyle``
            and ``color`` (an int: that colour of matplotlib's cycle, so that curves of one
            model share it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The legend goes below the axes: inside, it hid points (an exit near the top, a dip of a
    # budgeted curve) wherever it was put.
    fig, ax = plt.subplots(figsize=(6.4, 4.4 + 0.22 * len(curves)), dpi=120)
    for curve in curves:
        points = sorted(zip(curve["x"], curve["y"]))
        style = {"color": f"C{curve['color']}"} if "color" in curve else {}
        ax.plot([x / x_scale for x, _ in points], [100 * y for _, y in points],
                marker=curve.get("marker", "o"), markersize=4, linewidth=1.5, label=curve["label"],
                linestyle=curve.get("linestyle", "-"), **style)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1 if len(curves) > 4 else len(curves) or 1,
              frameon=False, fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
