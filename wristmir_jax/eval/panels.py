"""Retrieval panels: the query and its top-k results side by side, the chosen region's box
outlined, and the mined findings (canonical captions from the stored records) under each image.
Images of index items come from the index's DATA_DIR (the prepared, canonical image the boxes
refer to); when it is not available the tile says so instead of showing a wrong picture.
"""

from __future__ import annotations

import os
import textwrap
from typing import Any, Sequence

import numpy as np

from wristmir_jax.schema import REGION_INDEX, REGIONS, decode_record

_BOX_COLOURS = {"distal_radius": "#ff5a36", "distal_ulna": "#2ec4ff", "ulnar_styloid": "#ffd23f"}


def findings_text(record: np.ndarray, region: str | None = None) -> str:
    """The canonical caption of a stored record: the region's caption, or the global one."""
    from wristmir_jax.reports.captions import captions

    regions, glob = decode_record(np.asarray(record))
    caps = captions(regions, glob)
    return caps[region] if region in REGIONS else caps["global"]


class ImageStore:
    """Prepared images of index items, read lazily from DATA_DIR ("split/position" references)."""

    def __init__(self, data_dir: str | None):
        self.data_dir = data_dir
        self._sources: dict[str, Any] = {}

    def get(self, ref: str) -> np.ndarray | None:
        if not self.data_dir or not os.path.isdir(self.data_dir) or "/" not in ref:
            return None
        split, _, pos = ref.rpartition("/")
        try:
            if split not in self._sources:
                from wristmir_jax.data.source import DatasetSource

                self._sources[split] = DatasetSource(self.data_dir, split)
            img = np.asarray(self._sources[split].stored(int(pos))["image"], np.float32) / 255.0
        except Exception:  # a moved or rebuilt DATA_DIR: show the tile as unavailable
            return None
        return img[..., 0] if img.ndim == 3 else img


def draw_panel(out_path: str, query: dict[str, Any], results: Sequence[dict[str, Any]],
               region: str | None = None, columns: int = 6) -> str:
    """query: {"title", "image" (f32[S,S] or None), "boxes" ([3] boxes or None), "text"};
    results: [{"title", "image", "boxes", "text"}]. Writes a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    tiles = [query] + list(results)
    cols = min(columns, len(tiles))
    rows = -(-len(tiles) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.3 * rows), squeeze=False)
    show = [REGION_INDEX[region]] if region in REGION_INDEX else list(range(len(REGIONS)))
    for ax in axes.ravel():
        ax.axis("off")
    for t, ax in zip(tiles, axes.ravel()):
        img = t.get("image")
        if img is not None:
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            for r in show:
                b = (t.get("boxes") or [None] * len(REGIONS))[r]
                if b is None or not np.all(np.isfinite(b)):
                    continue
                ax.add_patch(patches.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False,
                                               lw=1.6, edgecolor=_BOX_COLOURS[REGIONS[r]]))
        else:
            ax.set_facecolor("#222")
            ax.text(0.5, 0.5, t.get("placeholder", "image not available"), ha="center", va="center",
                    color="w", fontsize=8, wrap=True, transform=ax.transAxes)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(t.get("title", ""), fontsize=8)
        body = "\n".join(textwrap.wrap(t.get("text", ""), 34)[:5])
        ax.text(0.5, -0.03, body, ha="center", va="top", fontsize=6.5, transform=ax.transAxes)
    fig.tight_layout()
    from wristmir_jax.utils.fs import atomic_write

    with atomic_write(out_path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return out_path
