"""Dataset statistics like the paper's Figure 3: histograms of caption length and of original image size, and of
panels per figure (compound figures split into panel pairs), accumulated per shard as small count tables and plotted
as PNGs."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pyarrow as pa

MAX_CAPTION_WORDS = 1024  # longer captions share the last bin
SIZE_BIN = 64  # pixels
MAX_SIZE = 8192


def table_histograms(staged: pa.Table) -> dict[str, dict[str, int]]:
    """Of a unit's staged rows after the dedup: the published pairs' caption lengths and sizes, and the number of
    panel pairs cut from each figure (0: used whole)."""
    table = staged.filter(staged.column("publish"))
    words = Counter(min(n, MAX_CAPTION_WORDS) for n in table.column("caption_words").to_pylist())
    sizes = {}
    for column in ("orig_width", "orig_height"):
        sizes[column] = Counter(min(v, MAX_SIZE) // SIZE_BIN * SIZE_BIN for v in table.column(column).to_pylist())
    return {
        "caption_words": {str(k): v for k, v in words.items()},
        **{column: {str(k): v for k, v in counts.items()} for column, counts in sizes.items()},
        "panels_per_figure": {str(k): v for k, v in panels_per_figure(staged).items()},
    }


def panels_per_figure(staged: pa.Table) -> Counter:
    keys, parents = staged.column("pair_key").to_pylist(), staged.column("parent_key").to_pylist()
    panels = Counter(parent for key, parent in zip(keys, parents) if key != parent)
    return Counter(panels[key] for key, parent in zip(keys, parents) if key == parent)


def merge_histograms(histograms: Iterable[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    merged: dict[str, Counter] = {}
    for histogram in histograms:
        for name, counts in histogram.items():
            merged.setdefault(name, Counter()).update({k: int(v) for k, v in counts.items()})
    return {name: {k: counts[k] for k in sorted(counts, key=int)} for name, counts in merged.items()}


def plot_histograms(histograms: dict[str, dict[str, int]]) -> dict[str, bytes]:
    """PNG bytes of the caption-length and image-size histograms (step plots: fast for any number of bins)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def png(figure) -> bytes:
        buffer = io.BytesIO()
        figure.tight_layout()
        figure.savefig(buffer, format="png", dpi=100)
        plt.close(figure)
        return buffer.getvalue()

    def stairs(axis, counts: dict[str, int], width: int, **style) -> None:
        edges = np.arange(0, (max(map(int, counts), default=0) // width + 2) * width, width)
        values = np.zeros(len(edges) - 1)
        for key, count in counts.items():
            values[int(key) // width] += count
        axis.stairs(values, edges, fill=True, **style)

    figure, axis = plt.subplots(figsize=(6, 4))
    stairs(axis, histograms.get("caption_words", {}), 4, color="tab:blue")
    axis.set(xlabel="caption length (words and punctuation, 4-word bins)", ylabel="pairs", title="Caption length")
    captions = png(figure)

    figure, axis = plt.subplots(figsize=(6, 4))
    for column, color in (("orig_width", "tab:orange"), ("orig_height", "tab:green")):
        stairs(axis, histograms.get(column, {}), SIZE_BIN, color=color, alpha=0.5,
               label=column.replace("orig_", "original "))
    axis.set(xlabel=f"pixels ({SIZE_BIN}-px bins)", ylabel="pairs", title="Image size")
    axis.legend()
    sizes = png(figure)

    figure, axis = plt.subplots(figsize=(6, 4))
    counts = {int(k): v for k, v in histograms.get("panels_per_figure", {}).items()}
    figures = sum(counts.values())
    compound = sum(v for k, v in counts.items() if k >= 2) / figures if figures else 0.0
    axis.bar(list(counts), list(counts.values()), color="tab:purple")
    axis.set(xlabel="panel pairs cut from the figure (0: used whole)", ylabel="figures",
             title=f"Panels per figure (compound share {compound:.1%} of {figures})")
    return {"caption_length.png": captions, "image_size.png": sizes, "panels_per_figure.png": png(figure)}
