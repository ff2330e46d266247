"""The `piddm` command line (Typer)."""

import os

from piddm_fem.errors import MPI_RANK

# Under mpiexec every rank runs the command: rank 0 prints the one-line error for all of them, and
# no rank writes terminal control codes (Open MPI gives ranks a pseudo-terminal even when the
# output is redirected to a file).
if MPI_RANK is not None:
    os.environ.setdefault("TTY_COMPATIBLE", "0")
