"""Helmholtz: -Laplacian(u) - k^2 u = f on the unit square, u = 0 on the boundary, f a GRF."""

import firedrake as fd

from piddm_fem.solvers.grf import GRF_RANGES, gaussian_random_field
from piddm_fem.solvers.problem import Problem


class Helmholtz(Problem):
    name = "helmholtz"
    display_name = "Helmholtz"
    fd_residual = "-lap(u) - k ** 2 * u - f"
    channels = ("f", "u")
    # configs/helmholtz-forward.yaml zeta_obs_a, helmholtz-inverse.yaml zeta_obs_u; f = 2.15 x and
    # u = 0.028 x (scripts/generate_helmholtz.py)
    diffusionpde_observation = {"f": (0.8, 1 / 2.15), "u": (60.0, 1 / 0.028)}
    default_params = {"k": 1.0, "alpha": 2.0, "tau": 3.0}
    spd = False  # indefinite once k^2 exceeds the first Dirichlet eigenvalue: GMRES, not CG
    param_ranges = {**GRF_RANGES, "k": "[0, inf)"}

    def form(self, fields, v):
        f, u = fields["f"], fields["u"]
        k2 = fd.Constant(self.params["k"] ** 2)
        return (fd.inner(fd.grad(u), fd.grad(v)) - k2 * u * v - f * v) * fd.dx

    def sample_coefficients(self, S, rng):
        return {"f": gaussian_random_field(S, rng, self.params["alpha"], self.params["tau"])}


PROBLEM_CLASS = Helmholtz
