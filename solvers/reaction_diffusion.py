"""Nonlinear reaction-diffusion: -div(a grad u) + kappa u^3 = f on the unit square, u = 0 on the
boundary, with Darcy's binary coefficient a (12 where a GRF >= 0, else 3) and f constant.

kappa = 100 and f = 200 make u of order one (max u about 1.2), where the cubic term dominates
the balance: Newton from u = 0 first overshoots to the linear solution, then needs 6 to 7
iterations to reach ||F|| <= 1e-10 ||F(0)||, 7 to 8 to the 1e-12 of DiscreteProblem.solve
(S = 33, 8 draws; docs/surrogate.md). The form is degree 3 in u, so the operator export is exact.
"""

import firedrake as fd

from piddm_fem.solvers.darcy import Darcy


class ReactionDiffusion(Darcy):
    name = "reaction_diffusion"
    display_name = "nonlinear reaction-diffusion"
    fd_residual = "-(a * lap(u) + dx(a) * dx(u) + dy(a) * dy(u)) + kappa * u ** 3 - f"
    default_params = {**Darcy.default_params, "f": 200.0, "kappa": 100.0}
    param_ranges = {**Darcy.param_ranges, "kappa": "[0, inf)"}  # kappa < 0 loses monotonicity
    linear = False

    def form(self, fields, v):
        a, u = fields["a"], fields["u"]
        f, kappa = fd.Constant(self.params["f"]), fd.Constant(self.params["kappa"])
        return (a * fd.inner(fd.grad(u), fd.grad(v)) + kappa * u**3 * v - f * v) * fd.dx


PROBLEM_CLASS = ReactionDiffusion
