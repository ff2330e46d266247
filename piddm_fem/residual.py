"""The weak-form residual as a batched, differentiable torch operator (docs/residual.md).

``ResidualOperator`` evaluates what Firedrake's ``assemble(F)`` gives, mapped to the grid, from the
element tensors exported by ``piddm_fem.solvers.export``. On the structured grid with element tensors
identical across cells (to round-off) it is a stencil of shifted slices (``piddm_fem.stencil``);
otherwise the general path gathers the cell values of each field, contracts them with the element
tensor of each Taylor term (einsum) and scatter-adds into the grid (``index_add_``). Both then
replace Dirichlet rows by u - g and data rows (where the unknown is an input, e.g. an initial
condition) by 0. Needs torch (and h5py to load) only; the device and dtype follow the input.

Units: ``raw`` is the weak residual (assembled vector); ``scaled`` divides the non-Dirichlet rows
by the lumped mass (strong-form units, comparable across resolutions); ``relative`` is
``||scaled(x)|| / ||scaled(x with u = 0)||`` in the grid RMS norm, the number `piddm validate`
reports; ``loss`` is the mean square of ``scaled`` per sample, the physics penalty of training.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from piddm_fem import grid, schema
from piddm_fem.errors import PiddmError
from piddm_fem.stencil import StencilResidual, canonical_connectivity, uniform_tensor

_LETTERS = "jkl"  # einsum indices of the (at most 3) field factors
# The stencil path runs on batch chunks of about 2^17 nodes (1 MiB per float64 array, a few arrays
# live per op): they stay in cache, and each op is 4x torch's parallel grain, so 2 threads share it.
# Measured at S = 64, B = 256 (benchmarks/residual_throughput.py, idle 2-core machine), float64
# fields/s for chunks of 2^15 / 2^16 / 2^17 / 2^18 / 2^20 nodes: 1 thread 14.6k / 17.6k / 17.4k /
# 13.9k / 8.9k; 2 threads 13.4k / 23.2k / 27.2k / 23.6k / 15.2k; 2 threads with another process
# busy on one core 14.1k / 12.3k / 13.4k.
_CHUNK_NODES = 2**17


class ResidualOperator(torch.nn.Module):
    """R(x) for x [B, C, S, S] in physical units; returns [B, 1, S, S] (one field per equation).

    ``stencil=False`` keeps the general path on a structured operator (to compare the two);
    ``uses_stencil`` says which path ``raw`` takes."""

    def __init__(self, op: dict, stencil: bool = True):
        super().__init__()
        self.problem, self.params = op["problem"], op["params"]
        self.resolution, self.channels = int(op["resolution"]), list(op["channels"])
        self.unknown = int(op["unknown"])
        S = self.resolution
        self.register_buffer("connectivity", torch.as_tensor(op["connectivity"], dtype=torch.long))
        self.register_buffer("lumped_mass", torch.as_tensor(op["lumped_mass"], dtype=torch.float64))
        self.register_buffer("bc_mask", torch.as_tensor(op["bc_mask"], dtype=torch.bool))
        self.register_buffer("bc_values", torch.as_tensor(op["bc_values"], dtype=torch.float64))
        self.register_buffer("data_mask", torch.as_tensor(op["data_mask"], dtype=torch.bool))
        self.term_channels = []
        for n, (combo, tensor) in enumerate(op["terms"]):
            if len(combo) > len(_LETTERS):
                raise PiddmError(f"operator term of degree {len(combo)} exceeds the supported 3")
            self.register_buffer(f"term{n}", torch.as_tensor(tensor, dtype=torch.float64))
            self.term_channels.append(tuple(combo))
        self._n = S * S
        self.stencil = self._stencil(op) if stencil else None

    @property
    def uses_stencil(self) -> bool:
        return self.stencil is not None

    @property
    def dirichlet_boundary(self) -> bool:
        """Whether the unknown is prescribed (Dirichlet) on the whole boundary and nowhere else:
        no data rows, no open side (unlike a space-time problem's initial row and final time)."""
        boundary = torch.from_numpy(grid.boundary_mask(self.resolution)).reshape(-1)
        return not bool(self.data_mask.any()) and torch.equal(self.bc_mask.cpu(), boundary)

    def _stencil(self, op: dict) -> StencilResidual | None:
        """The stencil path when the operator is on the structured grid and every cell has the same
        element tensors; the constant term (degree 0) becomes one node vector."""
        if not op.get("structured", False):
            return None
        S = self.resolution
        if not np.array_equal(op["connectivity"], canonical_connectivity(S)):
            raise PiddmError(f"{self.problem} operator: marked structured but its connectivity is not the "
                             f"{S}x{S} grid's cell order; re-export it with `piddm export-operator FILE`")
        inside = ~torch.as_tensor(grid.boundary_mask(S).reshape(-1))
        if (self.bc_mask | self.data_mask)[inside].any():  # the stencil path sets boundary rows only
            return None
        shared = [(combo, uniform_tensor(np.asarray(tensor))) for combo, tensor in op["terms"] if combo]
        if any(tensor is None for _, tensor in shared):
            return None
        constant = torch.zeros(self._n, dtype=torch.float64)
        for combo, tensor in op["terms"]:
            if not combo:
                constant.index_add_(0, self.connectivity.reshape(-1),
                                    torch.as_tensor(tensor, dtype=torch.float64).reshape(-1))
        self.register_buffer("constant", constant)
        return StencilResidual(shared, S)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ResidualOperator":
        """Load the operator stored in a dataset file (group ``operator``)."""
        op = schema.read_operator(path)
        if op is None:
            raise PiddmError(f"{path} holds no residual operator; export one with "
                             f"`piddm export-operator {path}` (needs Firedrake)")
        return cls(op)

    def check_input(self, x: torch.Tensor) -> None:
        S, C = self.resolution, len(self.channels)
        if x.ndim != 4 or tuple(x.shape[1:]) != (C, S, S):
            raise PiddmError(f"residual operator for {self.problem} expects [B, {C}, {S}, {S}] "
                             f"(channels {self.channels}), got {tuple(x.shape)}")

    def cell_values(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, ncell, nloc]: every field's values at every cell's local nodes."""
        return x.reshape(x.shape[0], len(self.channels), self._n)[:, :, self.connectivity]

    def term_local(self, n: int, cells: torch.Tensor, open_at: int | None = None) -> torch.Tensor:
        """Term ``n``'s element tensor contracted with the cell values of its factors: [B, ncell,
        nloc] per test function; with ``open_at`` the factor at that position is left open, which
        gives the local matrix [B, ncell, nloc, nloc] of a term linear in it."""
        combo = self.term_channels[n]
        tensor = getattr(self, f"term{n}").to(dtype=cells.dtype)
        letters = _LETTERS[:len(combo)]
        factors = [m for m in range(len(combo)) if m != open_at]
        if not factors:
            return tensor.unsqueeze(0).expand(cells.shape[0], *tensor.shape)
        spec = ("ei" + letters + "," + ",".join("be" + letters[m] for m in factors)
                + "->bei" + ("" if open_at is None else letters[open_at]))
        return torch.einsum(spec, tensor, *[cells[:, combo[m]] for m in factors])

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Weak residual (assembled vector on the grid), Dirichlet rows u - g: [B, 1, S, S]."""
        self.check_input(x)
        B, S = x.shape[0], self.resolution
        if self.stencil is not None:
            return self._raw_stencil(x)
        flat = x.reshape(B, len(self.channels), self._n)
        conn = self.connectivity
        cells = self.cell_values(x)
        local = self.term_local(0, cells)
        for n in range(1, len(self.term_channels)):
            local = local + self.term_local(n, cells)
        r = torch.zeros(B, self._n, dtype=x.dtype, device=x.device)
        r = r.index_add(1, conn.reshape(-1), local.reshape(B, -1))
        u = flat[:, self.unknown]
        r = torch.where(self.bc_mask, u - self.bc_values.to(x.dtype), r)
        r = torch.where(self.data_mask, torch.zeros_like(r), r)  # the unknown is an input there
        return r.reshape(B, 1, S, S)

    def _raw_stencil(self, x: torch.Tensor) -> torch.Tensor:
        """``raw`` on the stencil path: on the CPU in cache-sized chunks of the batch (on a GPU in one
        piece); the Dirichlet and data rows, all on the grid's boundary, are set on its first and
        last rows and columns only."""
        B, S = x.shape[0], self.resolution
        flat = x.reshape(B, len(self.channels), self._n)
        constant = self.constant.to(x.dtype)
        chunk = max(1, _CHUNK_NODES // self._n if x.device.type == "cpu" else B)
        r = torch.cat([self.stencil(part).add_(constant) for part in flat.split(chunk)]).reshape(B, S, S)
        u = x[:, self.unknown]
        g = self.bc_values.to(x.dtype).reshape(S, S)
        bc, data = self.bc_mask.reshape(S, S), self.data_mask.reshape(S, S)
        for ring in ((slice(0, S, S - 1), slice(None)), (slice(None), slice(0, S, S - 1))):
            side = r[(slice(None),) + ring]
            side = torch.where(bc[ring], u[(slice(None),) + ring] - g[ring], side)
            r[(slice(None),) + ring] = torch.where(data[ring], torch.zeros_like(side), side)
        return r.reshape(B, 1, S, S)

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """Strong-form scaled residual: raw / lumped mass off the Dirichlet rows, u - g on them."""
        r = self.raw(x).reshape(x.shape[0], self._n)
        r = torch.where(self.bc_mask, r, r / self.lumped_mass.to(x.dtype))
        return r.reshape(x.shape[0], 1, self.resolution, self.resolution)

    def unloaded(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of x with the unknown set to zero off its data rows: its residual is the load."""
        x0 = x.clone()
        u = x0[:, self.unknown].reshape(x.shape[0], self._n)
        x0[:, self.unknown] = torch.where(self.data_mask, u, torch.zeros_like(u)).reshape(u.shape[0], *x.shape[2:])
        return x0

    def load(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled residual with the unknown set to zero off its data rows (the right-hand side)."""
        return self.scaled(self.unloaded(x))

    def relative(self, x: torch.Tensor) -> torch.Tensor:
        """[B] relative residual ||scaled(x)|| / ||scaled(x, u = 0)|| (RMS over the grid)."""
        num = self.scaled(x).flatten(1).square().mean(1).sqrt()
        den = self.load(x).flatten(1).square().mean(1).sqrt()
        return num / torch.where(den > 0, den, torch.ones_like(den))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """[B] mean square of the scaled residual: the physics penalty ||R(x)||^2 of training."""
        return self.scaled(x).flatten(1).square().mean(1)

    forward = scaled
