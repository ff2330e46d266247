"""`piddm demo`: the whole pipeline on an embedded default (piddm_fem/recipe.py), with a report
and figures. Every stage skips what is already on disk, so an interrupted demo continues where it
stopped.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

out = Console(soft_wrap=True)


def demo(out_dir: Path = typer.Option(Path("demo_out"), "--out", help="Output directory."),
         quick: bool = typer.Option(False, "--quick", help="A seconds-long smoke run of every stage."),
         device: str = typer.Option("auto", "--device")):
    """Run the embedded default end to end and write OUT/report.md with figures."""
    from piddm_fem.recipe import run_demo

    report = run_demo(out_dir, quick, device, console=out)
    out.print(f"[bold green]report: {report}")
