"""Figures: grid fields as image panels (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_panels(panels: list[tuple[str, np.ndarray]], path, ncols: int | None = None,
                title: str | None = None, cmap: str = "viridis") -> Path:
    """Save a row-major grid of [S, S] images with colour bars; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = ncols or len(panels)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.9 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (name, image) in zip(axes.flat, panels):
        im = ax.imshow(image, origin="lower", extent=(0, 1, 0, 1), cmap=cmap)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_lines(axes: list[tuple[str, dict]], path, title: str | None = None, logy: bool = True,
               xlabel: str = "", logx: bool = False) -> Path:
    """Save side-by-side line plots: each axis is (y label, {series name: (x, y)}); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, len(axes), figsize=(4.6 * len(axes), 3.4), squeeze=False)
    for ax, (ylabel, series) in zip(axs.flat, axes):
        for name, (x, y) in series.items():
            ax.plot(x, y, marker="." if len(x) < 40 else None, label=name)
        ax.set_ylabel(ylabel), ax.set_xlabel(xlabel)
        ax.set_yscale("log" if logy else "linear"), ax.set_xscale("log" if logx else "linear")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _save(fig, path) -> Path:
    """Write the figure atomically (tmp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    # tight_layout ignores a suptitle: keep about 0.4 inch free for it above the panels' titles
    top = 1 - 0.4 / fig.get_figheight() if fig.get_suptitle() else 1
    fig.tight_layout(rect=(0, 0, 1, top))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
