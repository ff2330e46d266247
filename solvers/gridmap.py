"""Exact maps between Q1 Functions on the structured mesh and the S x S grid (piddm_fem.grid).

The DOF -> grid permutation is built once from DOF coordinates, so it stays right whatever order
Firedrake gives the mesh. For other spaces or meshes, ``sample_on_grid`` evaluates at the grid
nodes through a VertexOnlyMesh.
"""

from __future__ import annotations

import firedrake as fd
import numpy as np

from piddm_fem import grid
from piddm_fem.errors import PiddmError


def dof_coordinates(V) -> np.ndarray:
    """[ndof, 2] coordinates of the (scalar, nodal) DOFs of V."""
    W = fd.VectorFunctionSpace(V.mesh(), V.ufl_element())
    return fd.Function(W).interpolate(fd.SpatialCoordinate(V.mesh())).dat.data_ro.copy()


class GridMap:
    """Function <-> grid for a scalar Q1 space whose DOFs are the grid nodes (serial meshes)."""

    def __init__(self, V, S: int):
        self.V, self.S = V, S
        self.index = grid.flat_index(dof_coordinates(V), S)  # DOF -> flat grid node
        if self.index.size != S * S or np.unique(self.index).size != S * S:
            raise PiddmError(f"space {V.ufl_element()} does not match the {S}x{S} grid one-to-one; "
                             "use Q1 on the structured mesh or sample_on_grid")

    def to_grid(self, f) -> np.ndarray:
        out = np.empty(self.S * self.S)
        out[self.index] = f.dat.data_ro
        return out.reshape(self.S, self.S)

    def from_grid(self, values: np.ndarray, f=None):
        f = fd.Function(self.V) if f is None else f
        f.dat.data[:] = np.asarray(values, dtype=float).reshape(-1)[self.index]
        return f


def point_values(f, points: np.ndarray) -> np.ndarray:
    """[K] values of any scalar Function at the points [K, 2], in their order (a VertexOnlyMesh)."""
    vom = fd.VertexOnlyMesh(f.function_space().mesh(), points, redundant=True)
    at_points = fd.assemble(fd.interpolate(f, fd.FunctionSpace(vom, "DG", 0)))
    ordered = fd.Function(fd.FunctionSpace(vom.input_ordering, "DG", 0))
    ordered.interpolate(at_points)
    return ordered.dat.data_ro.copy()


def sample_on_grid(f, S: int) -> np.ndarray:
    """Point values [S, S] of any scalar Function at the grid nodes (any space, any mesh)."""
    X, Y = grid.coordinates(S)
    return point_values(f, np.column_stack([X.ravel(), Y.ravel()])).reshape(S, S)
