"""`piddm bench`: run the benchmark scripts of the checkout (benchmarks/), which print ratios
measured side by side in one run."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import typer

from piddm_fem.errors import PiddmError

BENCHMARKS = {"residual": "residual_throughput.py", "generate": "generate_throughput.py",
              "sampling": "teacher_sampling.py", "warm-start": "warm_start.py",
              "inverse": "inverse.py"}


def bench(which: str = typer.Argument("residual", help="residual | generate | sampling | warm-start | inverse"),
          args: list[str] = typer.Argument(None, help="Arguments passed to the script (after --).")):
    """Run one benchmark script; e.g. `piddm bench residual -- --res 64`."""
    if which not in BENCHMARKS:
        raise PiddmError(f"unknown benchmark {which!r}; choose one of {', '.join(BENCHMARKS)}")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / BENCHMARKS[which]
    if not script.exists():
        raise PiddmError(f"{script} not found; benchmarks run from a source checkout (pip install -e .)")
    # in this process, so that the script's bad-input errors (PiddmError) are one line like every command's
    argv = sys.argv
    sys.argv = [str(script), *(args or [])]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:  # argparse's usage errors (2) and the scripts' own exit codes
        if exc.code:
            raise typer.Exit(exc.code if isinstance(exc.code, int) else 1) from None
    finally:
        sys.argv = argv
