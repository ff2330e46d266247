"""Deferred Ctrl-C and SIGTERM for jobs made of units (a solve, a batch): the unit in flight
finishes and is saved, then the job stops with KeyboardInterrupt (the CLI exits 130).

Inside ``deferred()`` the first SIGINT or SIGTERM only records the request: no exception can hit a
PETSc callback, an HDF5 write or a half-finished sample. The job polls ``requested()`` between
units, saves, and raises KeyboardInterrupt. A second signal raises KeyboardInterrupt at once (for a
unit that takes too long); the job then discards what that unit produced. Leaving the block with a
request still pending raises KeyboardInterrupt, so an interrupt always ends the command with 130.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested = False


def write_atomic(path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file (one per process and thread, removed on
    failure) and a rename: an interruption leaves the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def requested() -> bool:
    """Whether a SIGINT/SIGTERM arrived inside the current ``deferred()`` block."""
    return _requested


def _handler(signum, frame):
    global _requested
    if _requested:
        raise KeyboardInterrupt
    _requested = True
    os.write(2, b"\ninterrupt: stopping after the current step (again to stop at once)\n")


@contextmanager
def deferred():
    global _requested
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread
        yield
        return
    _requested = False
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        pending, _requested = _requested, False
    if pending:
        raise KeyboardInterrupt
