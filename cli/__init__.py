"""The `piddm` command line (Typer)."""
