"""One PNG per benchmark JSON: grouped bars (throughput and MFU per batch size or per device
count, ours beside open_clip's where the suite has both). A suite's `plot(result)` returns the
panels; `write_png` draws them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display; figures go to files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from wristmir_jax.utils.fs import atomic_write  # noqa: E402


def panel(title: str, ylabel: str, groups: list[str], series: dict[str, list[float | None]],
          note: str = "") -> dict:
    """A bar panel: one bar per series within each group (None: no bar)."""
    return {"title": title, "ylabel": ylabel, "groups": [str(g) for g in groups],
            "series": {k: [None if v is None else float(v) for v in vals]
                       for k, vals in series.items()}, "note": note}


def write_png(panels: list[dict], path: str, suptitle: str = "") -> None:
    if not panels:
        raise ValueError("no panels to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), squeeze=False)
    for ax, p in zip(axes[0], panels):
        names = list(p["series"])
        x = np.arange(len(p["groups"]))
        width = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            vals = [np.nan if v is None else v for v in p["series"][name]]
            bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=name)
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_xticks(x, p["groups"])
        ax.set_title(p["title"], fontsize=10)
        ax.set_ylabel(p["ylabel"])
        if len(names) > 1:
            ax.legend(fontsize=8)
        if p.get("note"):
            ax.text(0.01, -0.2, p["note"], transform=ax.transAxes, fontsize=7, va="top")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
