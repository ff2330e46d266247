"""The residual in a dual norm: R^T K0^{-1} R, with K0 the constant-coefficient Q1 stiffness.

The strong-scaled L2 residual (``ResidualOperator.loss``) weighs an error e in u by about a/h^2 at
the grid scale, so its gradient is dominated by the highest frequencies. Measuring the weak
residual r (``ResidualOperator.raw``) in the norm of K0^{-1}, where K0 is the Q1 stiffness of
-Laplacian on the grid's interior nodes (homogeneous Dirichlet), weighs it like an error in u:
for a Laplace-like operator, r = K0 e gives r^T K0^{-1} r = e^T K0 e, the energy norm of e. It is
an integral (about ||s||^2 in H^-1 of the scaled residual s), so its size does not change with S.

K0 on the structured grid is kron(K1, M1) + kron(M1, K1) of the 1D Q1 stiffness and mass matrices,
both tridiagonal Toeplitz, so the orthonormal DST-I basis diagonalises it: a batched solve is two
matrix products each way and a division (``DSTPoisson``). Rows outside the interior (Dirichlet u - g,
data rows, the open side of a space-time problem) are not in K0; their scaled residual enters as
h^2 times its sum of squares, the integral of its square over the h-wide strip they sit on.
``PhysicsPenalty`` is the physics penalty in either norm, as distillation and the tasks use it.
torch only.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from piddm_fem import checks
from piddm_fem.errors import PiddmError

PHYSICS_NORMS = ("l2", "dual")


def check_norm(norm: str, option: str = "--physics-norm") -> str:
    """``norm`` if it is one of ``PHYSICS_NORMS``, else the one-line error naming ``option``."""
    checks.check_choice(option, norm, PHYSICS_NORMS)
    return norm


def natural_norm(operator) -> str:
    """The norm the tasks use unless told: "dual" where the unknown is Dirichlet on the whole
    boundary and nowhere else, the setting in which K0^-1 (homogeneous Dirichlet) is the Riesz map
    of the residual's space H^-1 and the dual norm weighs it like an energy error in u (Darcy,
    Poisson, Helmholtz, reaction-diffusion); "l2" otherwise (a space-time problem such as Burgers,
    with its initial row and open final time, for which the elliptic K0 is no such map)."""
    return "dual" if operator.dirichlet_boundary else "l2"


def norm_for(operator, norm: str | None = None, option: str = "--physics-norm") -> str:
    """``norm`` (checked), or ``operator``'s natural norm when None."""
    return natural_norm(operator) if norm is None else check_norm(norm, option)


class DSTPoisson(torch.nn.Module):
    """K0^{-1} on the (S-2)^2 interior nodes of the S x S grid, batched: ``solve(r)`` for r
    [B, S-2, S-2]. K0 is the Q1 stiffness of -Laplacian with h = 1/(S-1)."""

    def __init__(self, S: int):
        super().__init__()
        n, h = S - 2, 1.0 / (S - 1)
        k = torch.arange(1, n + 1, dtype=torch.float64)
        theta = math.pi * k / (n + 1)
        basis = math.sqrt(2.0 / (n + 1)) * torch.sin(torch.outer(k, k) * math.pi / (n + 1))
        stiffness = 2.0 / h * (1 - torch.cos(theta))     # eigenvalues of K1 = (1/h) tridiag(-1, 2, -1)
        mass = h / 6.0 * (4 + 2 * torch.cos(theta))      # eigenvalues of M1 = (h/6) tridiag(1, 4, 1)
        self.register_buffer("basis", basis)
        self.register_buffer("eigenvalues", stiffness[:, None] * mass[None, :] + mass[:, None] * stiffness[None, :])

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        Q = self.basis.to(r.dtype)
        return Q @ ((Q @ r @ Q) / self.eigenvalues.to(r.dtype)) @ Q


def dual_loss(operator, poisson: DSTPoisson, x: torch.Tensor) -> torch.Tensor:
    """[B] r^T K0^{-1} r of the weak residual at the interior nodes, plus h^2 times the sum of
    squares of the scaled residual on the other nodes (module doc). Zero exactly where the residual is."""
    raw = operator.raw(x)[:, 0]
    scaled = operator.scaled(x)[:, 0]
    interior = raw[:, 1:-1, 1:-1]
    energy = (interior * poisson.solve(interior)).flatten(1).sum(1)
    h2 = 1.0 / (x.shape[-1] - 1) ** 2
    ring = scaled.clone()
    ring[:, 1:-1, 1:-1] = 0.0
    return energy + h2 * ring.flatten(1).square().sum(1)


class PhysicsPenalty(torch.nn.Module):
    """[B] physics penalty of fields x [B, C, S, S] (physical units) in one of ``PHYSICS_NORMS``:
    "l2", the mean square of the scaled residual (``ResidualOperator.loss``), or "dual",
    ``dual_loss`` (evaluated in float64, returned in x's dtype). With ``typical`` (a
    ``data.Normalizer``) it is divided by the penalty of a typical load: constant fields at each
    channel's RMS over the training data, the unknown zeroed (``ResidualOperator.unloaded``). That
    is one number per problem (for Darcy, whose load is f = 1, the load itself), so one weight
    suits problems whose fields differ in scale, and it stays away from zero where a sample's own
    load would (a Poisson f near the data mean 0). With ``per_sample`` it is divided by each
    sample's own load penalty instead (in l2 the square of ``ResidualOperator.relative``): scaling
    a sample of a linear PDE scales its residual and load alike, so this penalty cannot be lowered
    by shrinking the fields, as the other two can where the load is a field of the sample (Poisson's
    f; Darcy's f = 1 is fixed, and there it equals the typical one). ``norm=None`` is the operator's
    ``natural_norm``. ``option`` names the setting in the one-line error on an unknown norm."""

    def __init__(self, operator, norm: str | None = "l2", typical=None, option: str = "--physics-norm",
                 per_sample: bool = False):
        super().__init__()
        if per_sample and typical is not None:
            raise ValueError("a physics penalty is relative to a typical load or to each sample's own, not both")
        self.operator, self.norm = operator, norm_for(operator, norm, option)
        self.poisson = DSTPoisson(operator.resolution).to(operator.bc_values.device) if self.norm == "dual" else None
        self.per_sample = per_sample
        self.scale = 1.0 if typical is None else self.typical_load(typical)

    def absolute(self, x: torch.Tensor) -> torch.Tensor:
        if self.poisson is None:
            return self.operator.loss(x)
        return dual_loss(self.operator, self.poisson, x.double()).to(x.dtype)

    def typical_load(self, normalizer) -> float:
        S, device = self.operator.resolution, self.operator.bc_values.device
        rms = torch.as_tensor(np.sqrt(normalizer.mean**2 + normalizer.std**2), dtype=torch.float64, device=device)
        x = rms.reshape(1, -1, 1, 1).expand(1, -1, S, S).contiguous()
        load = float(self.absolute(self.operator.unloaded(x))[0])
        if not load > 0:
            raise PiddmError(f"{self.operator.problem}: fields at the data's RMS have no load (zero forcing), so "
                             "the tasks' penalty cannot be relative to it; check the dataset's normalisation")
        return load

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_sample:  # a sample without load keeps its absolute penalty, as in ``relative``
            load = self.absolute(self.operator.unloaded(x))
            return self.absolute(x) / torch.where(load > 0, load, torch.ones_like(load))
        return self.absolute(x) / self.scale
