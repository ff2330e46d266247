"""Darcy flow: -div(a grad u) = 1 on the unit square, u = 0 on the boundary.

a = 12 where a Gaussian random field (alpha = 2, tau = 3) is >= 0, and 3 elsewhere.
"""

import firedrake as fd
import numpy as np

from piddm_fem.solvers.grf import GRF_RANGES, gaussian_random_field
from piddm_fem.solvers.problem import Problem


class Darcy(Problem):
    name = "darcy"
    display_name = "Darcy flow"
    channels = ("a", "u")
    fd_residual = "-(a * lap(u) + dx(a) * dx(u) + dy(a) * dy(u)) - f"
    default_params = {"f": 1.0, "a_high": 12.0, "a_low": 3.0, "alpha": 2.0, "tau": 3.0}
    param_ranges = {**GRF_RANGES, "a_high": "(0, inf)", "a_low": "(0, inf)"}
    # configs/darcy-forward.yaml zeta_obs_a, darcy-inverse.yaml zeta_obs_u; x = 0.2 a - 1.5 and
    # x = 115 u - 0.9 (merge_data.py)
    diffusionpde_observation = {"a": (5.0, 0.2), "u": (5000.0, 115.0)}
    ordered = (("a_low", "a_high"),)  # the binary coefficient's two values, thresholded between them

    def form(self, fields, v):
        a, u = fields["a"], fields["u"]
        f = fd.Constant(self.params["f"])
        return a * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx - f * v * fd.dx

    def thresholds(self):
        return {"a": 0.5 * (self.params["a_low"] + self.params["a_high"])}

    def coefficient_bounds(self):
        return "a", self.params["a_low"], self.params["a_high"]

    def sample_coefficients(self, S, rng):
        p = self.params
        grf = gaussian_random_field(S, rng, p["alpha"], p["tau"])
        return {"a": np.where(grf >= 0.0, p["a_high"], p["a_low"])}


PROBLEM_CLASS = Darcy
