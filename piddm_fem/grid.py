"""The grid convention, stated once and used everywhere (docs/datasets.md).

``fields[n, c, j, i]`` is channel ``c`` at ``x_i = i/(S-1)``, ``y_j = j/(S-1)`` for ``i, j`` in
``0..S-1``: boundary nodes are included, so an S-point grid is the vertex set of an (S-1)^2-cell
structured mesh of the unit square. Flattened, node ``(j, i)`` is ``j*S + i``.
"""

from __future__ import annotations

import numpy as np

from piddm_fem.errors import PiddmError


def check_resolution(S: int) -> int:
    if int(S) < 3:
        raise PiddmError(f"resolution {S} is too small; use S >= 3 grid points per side")
    return int(S)


def coordinates(S: int) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y), each [S, S], with X[j, i] = i/(S-1) and Y[j, i] = j/(S-1)."""
    t = np.linspace(0.0, 1.0, S)
    return np.meshgrid(t, t, indexing="xy")


def flat_index(points: np.ndarray, S: int, tol: float = 1e-8) -> np.ndarray:
    """Flat grid index j*S + i of each point [n, 2]; raises if a point is not a grid node."""
    ij = np.asarray(points) * (S - 1)
    nearest = np.rint(ij)
    if np.abs(ij - nearest).max(initial=0.0) > tol * (S - 1) or nearest.min() < 0 or nearest.max() > S - 1:
        raise PiddmError("mesh vertices do not sit on the S x S grid; use the structured unit-square mesh")
    i, j = nearest[:, 0].astype(np.int64), nearest[:, 1].astype(np.int64)
    return j * S + i


def boundary_mask(S: int) -> np.ndarray:
    """[S, S] bool, True on the boundary of the unit square."""
    m = np.zeros((S, S), bool)
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
    return m
