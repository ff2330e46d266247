"""piddm-fem: physics-informed distillation of diffusion models with Firedrake weak-form residuals.

Importing this package needs only numpy; the learning side needs torch, and only
``piddm_fem.solvers`` (plus ``validate`` and operator export) needs Firedrake.
"""

__version__ = "0.2.0"
