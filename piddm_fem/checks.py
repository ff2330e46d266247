"""Input checks shared by every entry point, each raising a one-line PiddmError before any work:
numeric ranges (problem parameters and command options) and output locations."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from piddm_fem.errors import PiddmError


def in_interval(value, spec: str) -> bool:
    """Whether ``value`` lies in the interval ``spec``, written like "[0, inf)" or "(0, 1]";
    NaN lies in none."""
    lo, hi = (float(v) for v in spec[1:-1].split(","))
    try:
        x = float(value)
    except (TypeError, ValueError):
        return False
    if math.isnan(x):
        return False
    above = lo <= x if spec[0] == "[" else lo < x
    below = x <= hi if spec[-1] == "]" else x < hi
    return above and below


def check_range(name: str, value, spec: str, where: str = ""):
    """Return ``value`` or raise naming the option (or parameter) and the interval it must lie in."""
    if not in_interval(value, spec):
        prefix = f"{where}: " if where else ""
        raise PiddmError(f"{prefix}{name}={value} is outside {spec}; pick a value in {spec}")
    return value


def _probe(directory: Path, target: Path) -> None:
    """Create ``directory`` if needed and write (then remove) a file in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".piddm-write-test-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise PiddmError(f"cannot write {target}: {exc.strerror} in {directory}; "
                         "choose a writable location") from None


def output_file(path, overwrite: bool | None = None, example: str = "out.h5") -> Path:
    """Check, before any work, that ``path`` can be written as a file: not a directory, its
    folder creatable and writable, and (unless ``overwrite`` is None) absent or ``overwrite``;
    ``example`` is the file name the error suggests inside a directory given instead."""
    path = Path(path)
    if path.is_dir():
        raise PiddmError(f"{path} is a directory; give a file name, e.g. {path / example}")
    if overwrite is False and path.exists():
        raise PiddmError(f"{path} exists; pass --overwrite to replace it")
    _probe(path.parent, path)
    return path


def output_dir(path) -> Path:
    """Check, before any work, that ``path`` is (or can be created as) a writable directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PiddmError(f"{path} is a file, not a directory; give a directory name")
    _probe(path, path)
    return path


def writable_existing(path) -> Path:
    """Check that an existing file can be modified in place (e.g. `export-operator`)."""
    path = Path(path)
    try:
        with open(path, "r+b"):
            pass
    except FileNotFoundError:
        raise PiddmError(f"{path}: no such file; check the path") from None
    except OSError as exc:
        raise PiddmError(f"cannot write {path}: {exc.strerror}; make it writable or copy it "
                         "to a writable location") from None
    return path


def check_options(config, ranges: dict) -> None:
    """``check_range`` for the fields of a settings dataclass; ``ranges`` maps a field to
    (the command-line option that sets it, its interval). None, an optional field's "use the
    default rule", is not checked."""
    for name, (option, spec) in ranges.items():
        if getattr(config, name) is not None:
            check_range(option, getattr(config, name), spec)


def steps_reach(steps: int, reached: int) -> None:
    """The one-line error when a run's ``--steps`` is below the step its checkpoint has reached."""
    if steps < reached:
        raise PiddmError(f"--steps {steps} is below the checkpoint's step {reached}; pass a larger --steps")


def check_choice(option: str, value, allowed) -> None:
    """The one-line error naming ``option`` when ``value`` is not one of ``allowed``."""
    if value not in allowed:
        *first, last = allowed
        raise PiddmError(f"unknown {option} {value!r}; choose {', '.join(first)} or {last}")
