"""Viscous Burgers in space-time: u_t + u u_x = nu u_xx on (x, t) in [0, 1]^2, nu = 0.01.

The grid's second axis is time (``fields[n, 0, j, i]`` is u at x_i, t_j). u = 0 at x = 0 and
x = 1 (Dirichlet in x; the initial condition is a sine series, so it vanishes there too); the
initial condition u(x, 0) is data: drawn here, an input on the row t = 0 of the field, like a
coefficient; t = 1 carries the natural (outflow) condition. One channel, u, as in DiffusionPDE.

The whole space-time Q1 Galerkin system is solved at once with Newton (5 to 6 iterations):

    int (u_t + u u_x) v + nu u_x v_x + tau (u_t + u u_x)(v_t + u v_x) dx dt = 0,

with tau = delta h an optional space-time streamline diffusion (SUPG along b = (u, 1)). It is off
by default (delta = 0): at nu = 0.01 and these initial conditions the plain Galerkin solutions keep
the maximum principle (max |u| = max |u(., 0)| on every draw checked) and converge at rate 2 on a
manufactured solution, while delta = 0.5 drops the rate to 1 (Q1 cannot represent the -nu u_xx of
the strong residual). The form is degree 3 in u, so the operator export is exact. Rates and the
choice: docs/burgers.md.
"""

import firedrake as fd
import numpy as np

from piddm_fem.solvers.problem import Problem


class Burgers(Problem):
    name = "burgers"
    display_name = "viscous Burgers (space-time)"
    channels = ("u",)
    default_params = {"nu": 0.01, "delta": 0.0, "alpha": 2.0, "tau": 5.0, "sigma": 12.5}
    param_ranges = {"nu": "(0, inf)", "delta": "[0, inf)", "alpha": "(0, inf)", "tau": "[0, inf)",
                    "sigma": "[0, inf)"}
    linear, spd, multigrid = False, False, False
    axes = ("x", "t")
    boundary = ("dirichlet", "open")
    dirichlet, data = ("x0", "x1"), ("y0",)
    fd_residual = "dy(u) + u * dx(u) - nu * dxx(u)"

    def form(self, fields, v):
        u = fields["u"]
        nu = fd.Constant(self.params["nu"])
        h = fd.CellDiameter(v.ufl_function_space().mesh()) / np.sqrt(2.0)  # the cell's side
        tau = fd.Constant(self.params["delta"]) * h
        ux, ut = u.dx(0), u.dx(1)
        transport = ut + u * ux
        return (transport * v + nu * ux * v.dx(0) + tau * transport * (v.dx(1) + u * v.dx(0))) * fd.dx

    def tasks(self):
        # forward: the initial condition -> the field; inverse: 500 sensors (at S = 128) after t = 0
        # -> the initial condition; reconstruct: DiffusionPDE's 5 of 128 spatial sensors, all times
        return {"forward": {"observe": {"u": {"rows": [0]}}, "recover": {"u": "all"}},
                "inverse": {"observe": {"u": {"points": 500, "exclude_rows": [0]}},
                            "recover": {"u": {"rows": [0]}}},
                "reconstruct": {"observe": {"u": {"columns": 5}}, "recover": {"u": "all"}}}

    def sample_coefficients(self, S, rng):
        """u(x, 0) = sum_k xi_k sigma (k^2 pi^2 + tau^2)^(-alpha/2) sin(k pi x), k < S, on every row
        (only t = 0 is read)."""
        p = self.params
        k = np.arange(1, S)
        amplitude = p["sigma"] * (k**2 * np.pi**2 + p["tau"] ** 2) ** (-p["alpha"] / 2)
        x = np.linspace(0.0, 1.0, S)
        u0 = (rng.standard_normal(k.size) * amplitude) @ np.sin(np.pi * np.outer(k, x))
        u0[[0, -1]] = 0.0
        return {"u": np.tile(u0, (S, 1))}


PROBLEM_CLASS = Burgers
