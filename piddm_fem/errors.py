"""User-facing errors: one line that names the problem and the fix."""

import os

# this process's rank under mpiexec (None outside it): every rank fails alike, rank 0 says so
MPI_RANK = next((int(os.environ[k]) for k in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")
                 if k in os.environ), None)


class PiddmError(Exception):
    """An error caused by input; the CLI prints it as one line and exits non-zero."""


def require_firedrake(what: str):
    """Import firedrake or raise a PiddmError saying which step needs it."""
    try:
        import firedrake
    except ImportError as exc:
        raise PiddmError(
            f"{what} needs Firedrake, which is not importable here ({exc}); "
            "run `make setup` or use the .venv it creates"
        ) from None
    return firedrake


def script_main(main) -> None:
    """Run the ``main`` of a script (examples/, benchmarks/): a PiddmError ends it with its one
    line (on rank 0 under mpiexec) and exit code 2, as the CLI's commands end."""
    import sys

    try:
        main()
    except PiddmError as e:
        if not MPI_RANK:
            print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
