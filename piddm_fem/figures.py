"""Figures: grid fields as image panels (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_panels(panels: list[tuple[str, np.ndarray]], path, ncols: int | None = None,
                title: str | None = None, cmap: str = "viridis") -> Path:
    """Save a row-major grid of [S, S] images with colour bars; returns the path."""
    plt = _pyplot()

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


def plot_lines(axes: list[tuple], path, title: str | None = None, logy: bool = True,
               xlabel: str = "", logx: bool = False, ncols: int | None = None) -> Path:
    """Save line plots side by side (``ncols`` per row, default all); returns the path. Each axis
    is (y label, {series name: (x, y)}) or (y label, series, x label); a series may be (x, y,
    y error) and then carries error bars. A series name has the same colour and marker in every axis."""
    plt = _pyplot()

    ncols = ncols or len(axes)
    nrows = -(-len(axes) // ncols)
    fig, axs = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    names = list(dict.fromkeys(name for _, series, *_ in axes for name in series))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax in axs.flat[len(axes):]:
        ax.axis("off")
    for ax, (ylabel, series, *own_xlabel) in zip(axs.flat, axes):
        for name, (x, y, *err) in series.items():
            i = names.index(name)  # past the palette's colours, the same colours with other markers
            marker = "osD^v"[i // len(palette) % 5] if len(x) < 12 else "." if len(x) < 40 else None
            ax.errorbar(x, y, yerr=err[0] if err else None, marker=marker, markersize=4, capsize=2, label=name,
                        color=palette[i % len(palette)])
        ax.set_ylabel(ylabel), ax.set_xlabel(own_xlabel[0] if own_xlabel else xlabel)
        ax.set_yscale("log" if logy else "linear"), ax.set_xscale("log" if logx else "linear")
        ax.grid(alpha=0.3, which="both" if logx else "major")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_points(points: dict, path, xlabel: str, ylabel: str, title: str | None = None,
                goal: tuple | None = None, goal_label: str = "goal") -> Path:
    """Save a log-log scatter of named points {name: (x, y)}, each labelled; ``goal`` (x, y)
    shades the region below and left of it. Returns the path."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    if goal is not None:
        ax.fill_between([1e-12, goal[0]], 1e-12, goal[1], color="tab:green", alpha=0.12, label=goal_label)
    for i, (name, (x, y)) in enumerate(sorted(points.items(), key=lambda kv: kv[1])):
        ax.plot(x, y, "o", color="tab:blue")  # labels of neighbours alternate above and below
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3 if i % 2 else -10), fontsize=7)
    xs, ys = [p[0] for p in points.values()], [p[1] for p in points.values()]
    if goal is not None:
        xs, ys = xs + [goal[0]], ys + [goal[1]]
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5), ax.set_ylim(min(ys) / 1.5, max(ys) * 1.5)
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    if goal is not None:
        ax.legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _save(fig, path) -> Path:
    """Write the figure atomically (tmp file, then rename) and close it."""
    plt = _pyplot()

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
