"""Poisson: -Laplacian(u) = f on the unit square, u = 0 on the boundary, f a Gaussian random field."""

import firedrake as fd

from piddm_fem.solvers.grf import GRF_RANGES, gaussian_random_field
from piddm_fem.solvers.problem import Problem


class Poisson(Problem):
    name = "poisson"
    display_name = "Poisson"
    fd_residual = "-lap(u) - f"
    channels = ("f", "u")
    # configs/poisson-forward.yaml zeta_obs_a, poisson-inverse.yaml zeta_obs_u; f = 2.15 x and
    # u = x / 36.5 (scripts/generate_poisson.py)
    diffusionpde_observation = {"f": (0.8, 1 / 2.15), "u": (40.0, 36.5)}
    default_params = {"alpha": 2.0, "tau": 3.0}
    param_ranges = GRF_RANGES

    def form(self, fields, v):
        f, u = fields["f"], fields["u"]
        return fd.inner(fd.grad(u), fd.grad(v)) * fd.dx - f * v * fd.dx

    def sample_coefficients(self, S, rng):
        return {"f": gaussian_random_field(S, rng, self.params["alpha"], self.params["tau"])}


PROBLEM_CLASS = Poisson
