"""Extract a problem's weak residual as per-cell element tensors plus connectivity.

The residual F(x; v) is a polynomial of degree <= 3 in the grid fields x, so its Taylor expansion
about x = 0 is exact: F(x) = sum_k sum over channel multisets (c_1..c_k) of
(1 / prod m_c!) D^k F(0)[x_c1, ..., x_ck]. Each derivative tensor is assembled on the *broken* Q1
space, where every cell owns its DOFs: the assembled matrix is block diagonal and its blocks are the
element tensors. For k >= 2 the first k - 1 directions are set, one local basis function at a time,
to indicator Functions of the broken space (the same local basis function in every cell). The result
(numpy arrays, see ``piddm_fem.schema.write_operator``) is evaluated by
``piddm_fem.residual.ResidualOperator`` with torch alone.

On the structured grid (always, for the meshes of ``DiscreteProblem``) the cells are stored in the
grid's order with their local nodes in the order of ``piddm_fem.stencil.canonical_connectivity``
and the operator is marked ``structured``, so that the evaluation can be a stencil.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import firedrake as fd
import numpy as np
import ufl
from ufl.algorithms import expand_derivatives

from piddm_fem.errors import PiddmError
from piddm_fem.stencil import canonical_connectivity
from piddm_fem.solvers.discrete import DiscreteProblem
from piddm_fem.solvers.gridmap import dof_coordinates

MAX_DEGREE = 3


def _summands(expr):
    """The additive terms of a UFL expression."""
    if isinstance(expr, ufl.classes.Sum):
        return [t for op in expr.ufl_operands for t in _summands(op)]
    return [expr]


def _is_zero(form) -> bool:
    return expand_derivatives(form).empty()


def check_polynomial(F, fields: dict, direction) -> None:
    """Raise naming the first term of F that is not a polynomial of degree <= MAX_DEGREE."""
    for integral in F.integrals():
        for term in _summands(integral.integrand()):
            term_form = ufl.Form([integral.reconstruct(integrand=term)])
            for combo in itertools.combinations_with_replacement(list(fields), MAX_DEGREE + 1):
                d = term_form
                for name in combo:
                    d = ufl.derivative(d, fields[name], direction)
                if not _is_zero(d):
                    raise PiddmError(
                        f"unsupported term in the weak form: {term} is not a polynomial of degree "
                        f"<= {MAX_DEGREE} in the fields {list(fields)}; rewrite it polynomially "
                        "or evaluate the residual with Firedrake (`piddm validate`)")


def structured_order(connectivity: np.ndarray, S: int):
    """(cell order, per-cell local order) that turn ``connectivity`` [ncell, 4] (grid nodes) into
    ``canonical_connectivity(S)``, or None when the cells are not the S x S grid's unit squares."""
    base = connectivity.min(1)
    local = np.argsort(connectivity - base[:, None], axis=1, kind="stable")
    j, i = np.divmod(base, S)
    position = j * (S - 1) + i
    canonical = canonical_connectivity(S)
    if (connectivity.shape != canonical.shape or (i >= S - 1).any() or (j >= S - 1).any()
            or np.unique(position).size != position.size):
        return None
    order = np.argsort(position)
    local = local[order]
    if not np.array_equal(np.take_along_axis(connectivity[order], local, axis=1), canonical):
        return None
    return order, local


def _reorder_cells(tensor: np.ndarray, order: np.ndarray, local: np.ndarray) -> np.ndarray:
    """A per-cell tensor [ncell, nloc, ...] in cell order ``order``, every local axis in ``local``."""
    out = tensor[order]
    for axis in range(1, out.ndim):
        shape = [local.shape[0]] + [1] * (out.ndim - 1)
        shape[axis] = local.shape[1]
        out = np.take_along_axis(out, local.reshape(shape), axis=axis)
    return out


def extract_operator(problem, S: int, reorder: bool | None = None) -> dict:
    """The residual operator of ``problem`` on the S x S grid as numpy arrays (see module doc)."""
    disc = DiscreteProblem(problem, S, reorder=reorder)
    V = disc.V
    Vb = fd.FunctionSpace(disc.mesh, fd.BrokenElement(V.ufl_element()))
    cells_b, cells = Vb.cell_node_list, V.cell_node_list
    if not np.allclose(dof_coordinates(Vb)[cells_b], dof_coordinates(V)[cells], atol=1e-12):
        raise PiddmError("broken and continuous spaces order local DOFs differently; "
                         "this element is not supported by the operator export")
    ncell, nloc = cells_b.shape
    cell_of = np.empty(Vb.dof_count, np.int64)
    local_of = np.empty(Vb.dof_count, np.int64)
    cell_of[cells_b] = np.arange(ncell)[:, None]
    local_of[cells_b] = np.arange(nloc)[None, :]

    channels = list(problem.channels)
    fields = {name: fd.Function(Vb, name=name) for name in channels}  # all zero: expand about 0
    F = problem.form(fields, fd.TestFunction(Vb))
    check_polynomial(F, fields, fd.Function(Vb))
    trial = fd.TrialFunction(Vb)
    directions = [fd.Function(Vb) for _ in range(MAX_DEGREE - 1)]

    def element_blocks(form) -> np.ndarray:
        """[ncell, nloc, nloc] blocks of an assembled block-diagonal 2-form."""
        indptr, cols, vals = fd.assemble(form).petscmat.getValuesCSR()
        rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
        if not np.array_equal(cell_of[rows], cell_of[cols]):
            raise PiddmError("broken-space matrix couples cells; the form has facet terms, "
                             "which the operator export does not support")
        out = np.zeros((ncell, nloc, nloc))
        out[cell_of[rows], local_of[rows], local_of[cols]] = vals
        return out

    terms = []
    if not _is_zero(F):
        vec = fd.assemble(F).dat.data_ro
        if vec.any():
            terms.append(((), vec[cells_b].copy()))
    for k in range(1, MAX_DEGREE + 1):
        for combo in itertools.combinations_with_replacement(range(len(channels)), k):
            d = F
            for name, w in zip([channels[c] for c in combo[:-1]], directions):
                d = ufl.derivative(d, fields[name], w)
            d = expand_derivatives(ufl.derivative(d, fields[channels[combo[-1]]], trial))
            if d.empty():
                continue
            tensor = np.zeros((ncell, nloc) + (nloc,) * k)
            for local in itertools.product(range(nloc), repeat=k - 1):
                for w, j in zip(directions, local):
                    w.dat.data[:] = 0.0
                    w.dat.data[cells_b[:, j]] = 1.0
                tensor[(slice(None), slice(None)) + local] = element_blocks(d)
            if not tensor.any():  # e.g. d/da of a grad u . grad v at u = 0: nothing to evaluate
                continue
            scale = 1.0 / math.prod(math.factorial(m) for m in Counter(combo).values())
            terms.append((combo, scale * tensor))
    connectivity = disc.gridmap.index[cells].astype(np.int64)
    structured = structured_order(connectivity, S)
    if structured is not None:
        connectivity = canonical_connectivity(S)
        terms = [(combo, _reorder_cells(tensor, *structured)) for combo, tensor in terms]
    return {
        "problem": problem.name,
        "params": dict(problem.params),
        "resolution": S,
        "channels": channels,
        "unknown": channels.index(problem.unknown),
        "connectivity": connectivity,
        "structured": structured is not None,
        "terms": terms,
        "lumped_mass": disc.lumped_mass,
        "bc_mask": disc.bc_mask,
        "bc_values": disc.g_grid,
        "data_mask": disc.data_mask,
    }
