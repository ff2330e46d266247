import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
os.environ.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def darcy_file(tmp_path_factory):
    """A small Firedrake-generated Darcy dataset (S = 17, 6 samples) with its operator."""
    from piddm_fem.solvers import get_problem
    from piddm_fem.solvers.generate import generate

    path = tmp_path_factory.mktemp("data") / "darcy17.h5"
    generate(get_problem("darcy"), 6, 17, 3, path, show_progress=False)
    return path
