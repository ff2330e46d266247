"""One rich progress bar style for every long job (generate, train, distil, sample)."""

from __future__ import annotations

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def progress_bar(**kwargs) -> Progress:
    """A Progress with count, rate-friendly fields, elapsed time and ETA.

    Tasks may carry a ``status`` field (free text, e.g. ``loss=0.12 3.4 it/s``)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        **kwargs,
    )
