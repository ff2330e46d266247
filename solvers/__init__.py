"""Firedrake side of piddm-fem: PDE problems, solves, datasets and weak-form residuals.

Importing this package needs Firedrake; it never imports torch. Problems are discovered from the
modules listed in ``PROBLEM_MODULES`` – adding a PDE means adding one file and its name here
(or, for a problem kept elsewhere, ``register_problem``).
"""

import importlib
import os
import sys
import warnings

from piddm_fem.errors import PiddmError, require_firedrake

try:  # PETSc must not read our command line (it would warn about --res, --out, ...)
    import petsc4py

    petsc4py.init(sys.argv[:1])
except ImportError:
    pass
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*PETSc has already been initialised.*")
    require_firedrake("piddm_fem.solvers")


def mpiexec_env() -> dict:
    """The environment for starting ``mpiexec`` from a process that has initialised MPI itself:
    without the singleton's OMPI_/PMIX_ variables (they confuse the child launcher), and with
    Open MPI allowed to run as root."""
    keep = {"OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "OMPI_MCA_rmaps_base_oversubscribe"}
    env = {k: v for k, v in os.environ.items()
           if k in keep or not k.startswith(("OMPI_", "PMIX_", "OPAL_", "PRTE_"))}
    env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMP_NUM_THREADS": "1"})
    return env

PROBLEM_MODULES = ("darcy", "poisson", "helmholtz", "reaction_diffusion", "burgers")
_REGISTRY = {name: f"{__name__}.{name}" for name in PROBLEM_MODULES}


def register_problem(name: str, module: str) -> None:
    """Register a problem defined outside this package: ``module`` (an importable module path)
    defines ``PROBLEM_CLASS``, whose ``name`` is ``name``."""
    _REGISTRY[name] = module


def problem_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_problem(name: str, **params):
    """The Problem called ``name`` with its default parameters updated by ``params``."""
    if name not in _REGISTRY:
        raise PiddmError(f"unknown problem {name!r}; choose one of {', '.join(_REGISTRY)}")
    return importlib.import_module(_REGISTRY[name]).PROBLEM_CLASS(**params)
