"""Firedrake side of piddm-fem: PDE problems, solves, datasets and weak-form residuals.

Importing this package needs Firedrake; it never imports torch. Problems are discovered from the
modules listed in ``PROBLEM_MODULES`` – adding a PDE means adding one file and its name here.
"""

import importlib

from piddm_fem.errors import PiddmError, require_firedrake

require_firedrake("piddm_fem.solvers")

PROBLEM_MODULES = ("darcy", "poisson", "helmholtz")


def problem_names() -> tuple[str, ...]:
    return PROBLEM_MODULES


def get_problem(name: str, **params):
    """The Problem called ``name`` with its default parameters updated by ``params``."""
    if name not in PROBLEM_MODULES:
        raise PiddmError(f"unknown problem {name!r}; choose one of {', '.join(PROBLEM_MODULES)}")
    module = importlib.import_module(f"{__name__}.{name}")
    return module.PROBLEM_CLASS(**params)
