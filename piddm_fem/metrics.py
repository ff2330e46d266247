"""Metrics shared by every comparison: residual, ensemble MMSE/SMSE, relative L2, binary error rate,
and how close samples sit to the training data.

All take physical-unit fields ``[N, C, S, S]`` (torch or numpy) and return numpy values.
"""

from __future__ import annotations

import numpy as np
import torch

def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, float)


def residual(operator, x, batch: int = 256) -> np.ndarray:
    """[N] relative weak-form residual (docs/residual.md), evaluated in float64 batches on the
    operator's device."""
    x = torch.as_tensor(_np(x), device=operator.bc_mask.device)
    with torch.no_grad():
        return np.concatenate([operator.relative(x[i:i + batch]).cpu().numpy() for i in range(0, len(x), batch)])


def mmse_smse(generated, reference) -> tuple[np.ndarray, np.ndarray]:
    """Per channel: MSE between the pointwise ensemble means, and between the pointwise stds."""
    g, r = _np(generated), _np(reference)
    mmse = ((g.mean(0) - r.mean(0)) ** 2).mean(axis=(1, 2))
    smse = ((g.std(0) - r.std(0)) ** 2).mean(axis=(1, 2))
    return mmse, smse


def nearest_distance(x, data, scale, batch: int = 256) -> np.ndarray:
    """[N] RMS distance from each field of ``x`` to its nearest field of ``data``, every channel
    divided by its ``scale`` [C]."""
    s = torch.as_tensor(np.asarray(scale, float)).reshape(1, -1, 1, 1)
    d = (torch.as_tensor(_np(data)) / s).flatten(1)
    x = (torch.as_tensor(_np(x)) / s).flatten(1)
    nearest = [torch.cdist(x[i:i + batch], d).min(1).values for i in range(0, len(x), batch)]
    return torch.cat(nearest).numpy() / np.sqrt(d.shape[1])


def copy_ratio(generated, train, test) -> float:
    """Whether samples reproduce training data: the median distance from a generated field to its
    nearest training field over the same median for the held-out ``test`` fields (channels in
    units of the training data's std). About 1 for a model that generalises, as fresh data would;
    far below 1 for one that returns (near) copies of its training samples."""
    scale = _np(train).std(axis=(0, 2, 3))
    scale = np.where(scale > 0, scale, 1.0)
    return float(np.median(nearest_distance(generated, train, scale)) / np.median(nearest_distance(test, train, scale)))


def relative_l2(estimate, truth, channel: int, region=None) -> np.ndarray:
    """[N] ||estimate - truth|| / ||truth|| of one channel, over the nodes of ``region`` ([S, S]
    bool; all nodes when None)."""
    e, t = _np(estimate)[:, channel], _np(truth)[:, channel]
    if region is not None:
        e, t = e[:, region], t[:, region]
    return np.linalg.norm((e - t).reshape(len(e), -1), axis=1) / np.linalg.norm(t.reshape(len(t), -1), axis=1)


def interface_nodes(high: np.ndarray) -> np.ndarray:
    """[N, S, S] bool: the nodes of a thresholded binary field [N, S, S] with a grid neighbour
    (left, right, up, down) on the other side of the threshold."""
    near = np.zeros_like(high, dtype=bool)
    across_y = high[:, 1:] != high[:, :-1]
    near[:, 1:] |= across_y
    near[:, :-1] |= across_y
    across_x = high[:, :, 1:] != high[:, :, :-1]
    near[:, :, 1:] |= across_x
    near[:, :, :-1] |= across_x
    return near


NODE_SETS = ("all", "off_interfaces", "at_interfaces")  # where a binary error rate is counted


def binary_error_rate(estimate, truth, channel: int, threshold: float, region=None,
                      nodes: str = "all") -> np.ndarray:
    """[N] fraction of nodes (of ``region``, [S, S] bool) whose thresholded binary coefficient is
    wrong; the threshold of each binary channel is in the problem's metadata (``thresholds``).
    ``nodes``: all of them, only those off the truth's interfaces (``interface_nodes``: there a
    misplaced interface counts no error), or only those at them (NaN for a problem with none)."""
    if nodes not in NODE_SETS:
        raise ValueError(f"nodes={nodes!r}; use one of {NODE_SETS}")
    e, t = _np(estimate)[:, channel] > threshold, _np(truth)[:, channel] > threshold
    counted = np.ones_like(t) if region is None else np.broadcast_to(np.asarray(region, bool), t.shape)
    if nodes != "all":
        at = interface_nodes(t)
        counted = counted & (at if nodes == "at_interfaces" else ~at)
    wrong, total = ((e != t) & counted).sum((1, 2)), counted.sum((1, 2))
    return np.divide(wrong, total, out=np.full(len(t), np.nan), where=total > 0)


def binary_errors(estimate, truth, channel: int, name: str, threshold: float, region=None) -> dict:
    """{"error_rate_<name>", "error_rate_<name>_off_interfaces", "error_rate_<name>_at_interfaces":
    [N]}: the error rates of a binary channel over ``region``, over its nodes off the truth's
    interfaces (wrong regions) and over those at them (interface placement)."""
    return {f"error_rate_{name}" + ("" if nodes == "all" else f"_{nodes}"):
            binary_error_rate(estimate, truth, channel, threshold, region, nodes)
            for nodes in NODE_SETS}


def high_fraction(x, channel: int, threshold: float) -> float:
    """Fraction of a binary channel's values above its threshold (the high value's share)."""
    return float((_np(x)[:, channel] > threshold).mean())


def summarize(values) -> dict:
    """Median, mean, std, min and max of per-seed (or per-sample) values (NaN for none)."""
    v = np.asarray(values, float)
    if v.size == 0:
        return {"median": np.nan, "mean": np.nan, "std": np.nan, "min": np.nan, "max": np.nan, "n": 0}
    return {"median": float(np.median(v)), "mean": float(v.mean()), "std": float(v.std()),
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}
