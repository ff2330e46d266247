"""The `piddm` command line (Typer)."""

import os

# Under mpiexec every rank runs the command: rank 0 prints the one-line error for all of them, and
# no rank writes terminal control codes (Open MPI gives ranks a pseudo-terminal even when the
# output is redirected to a file).
MPI_RANK = next((int(os.environ[k]) for k in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")
                 if k in os.environ), None)
if MPI_RANK is not None:
    os.environ.setdefault("TTY_COMPATIBLE", "0")
