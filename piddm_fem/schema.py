"""The HDF5 dataset schema shared by the solver, the models and `piddm validate` (docs/datasets.md).

A dataset file holds ``fields`` float64 [N, C, S, S] (or float32, a compact copy to carry to
another machine; readers return float64) on the grid of ``piddm_fem.grid`` plus
per-sample ``status`` and ``solver_info``. Files are written under ``<name>.partial`` and renamed
to ``<name>`` only once complete, so a finished-looking file is never half-written; a writer holds
``<name>.lock`` (``exclusive``), so two processes never write the same file. Readers refuse a file
whose ``complete`` attribute is not true. Needs h5py and numpy only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from piddm_fem import __version__, checks
from piddm_fem.errors import PiddmError
from piddm_fem.interrupt import deferred

SCHEMA_VERSION = 1
STATUS_PENDING, STATUS_OK, STATUS_FAILED = 0, 1, 2
STATUS_NAMES = {STATUS_PENDING: "pending", STATUS_OK: "ok", STATUS_FAILED: "failed"}
DOMAIN = ((0.0, 1.0), (0.0, 1.0))
BOUNDARY_TYPES = ("dirichlet", "periodic", "open")  # open: neither (e.g. a time axis)
DEFAULT_BOUNDARY = ("dirichlet", "dirichlet")  # per axis (x, y); files written before the attribute


@dataclass
class DatasetInfo:
    """The attributes that identify a dataset: which problem, which grid, where it came from."""

    problem: str
    channels: list[str]
    resolution: int
    n_samples: int
    seed: int | None = None
    source: str = "firedrake"
    params: dict = field(default_factory=dict)
    solver_parameters: dict = field(default_factory=dict)
    boundary: list[str] = field(default_factory=lambda: list(DEFAULT_BOUNDARY))
    meta: dict = field(default_factory=dict)  # the problem's metadata (Problem.metadata)
    version: str = __version__
    schema_version: int = SCHEMA_VERSION


def default_tasks(channels, unknown: str) -> dict:
    """The tasks of a problem with coefficient channels and one unknown (``Problem.tasks``):
    forward observes the coefficients, inverse the unknown at 500 nodes (at S = 128, scaled with
    S^2), reconstruct 10% of every channel; each recovers what it does not observe."""
    coefficients = [c for c in channels if c != unknown]
    return {"forward": {"observe": {c: "all" for c in coefficients}, "recover": {unknown: "all"}},
            "inverse": {"observe": {unknown: {"points": 500}}, "recover": {c: "all" for c in coefficients}},
            "reconstruct": {"observe": {c: {"fraction": 0.1} for c in channels},
                            "recover": {c: "all" for c in channels}}}


def default_meta(problem: str, channels) -> dict:
    """The metadata of a file written before datasets carried it: the unknown is "u" (the last
    channel where there is no "u"), no binary channels, the default tasks."""
    unknown = "u" if "u" in channels else channels[-1]
    return {"display_name": problem, "axes": ["x", "y"], "unknown": unknown, "thresholds": {},
            "tasks": default_tasks(channels, unknown), "fd_residual": None, "diffusionpde_observation": None}


def check_meta(where, meta: dict, channels) -> None:
    """Raise unless every channel that ``meta`` names is one of ``channels``."""
    named = {meta["unknown"], *meta["thresholds"]}
    for spec in meta["tasks"].values():
        named |= set(spec["observe"]) | set(spec["recover"])
    if not named <= set(channels):
        raise PiddmError(f"{where}: its metadata names channel(s) {sorted(named - set(channels))} that "
                         f"are not among {list(channels)}; regenerate the file with `piddm generate`")


def digest(path: str | os.PathLike) -> str:
    """SHA-256 of a dataset file's bytes: which data a derived result was made from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def partial_path(path: str | os.PathLike) -> Path:
    """Where an unfinished file lives until it is complete."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


@contextmanager
def exclusive(path: str | os.PathLike):
    """Hold an exclusive lock on ``<path>.lock`` while writing ``path`` (and its partial file).

    A second writer of the same path gets a one-line error at once; the lock dies with its
    process, so a killed run never blocks a later ``--resume``."""
    path = checks.output_file(path)
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(lock).st_ino:  # released and removed meanwhile
            raise BlockingIOError
    except OSError:
        os.close(fd)
        raise PiddmError(f"another process is writing {path} (it holds {lock}); wait for it to "
                         "finish or choose another --out") from None
    try:
        yield path
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def _h5py():
    import h5py

    return h5py


def _open(path: Path, mode: str = "r"):
    h5py = _h5py()
    if not path.exists():
        raise PiddmError(f"{path}: no such file; check the path or create it with `piddm generate`")
    if path.is_dir():
        raise PiddmError(f"{path} is a folder; give an HDF5 file, e.g. {path / 'data.h5'}")
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise PiddmError(
            f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]}); "
            "regenerate it or restore a good copy"
        ) from None


def _malformed(path, exc: Exception, what: str = "attributes") -> PiddmError:
    """The one-line error for a file whose piddm-fem attributes or groups cannot be parsed."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return PiddmError(f"{path}: malformed piddm-fem {what} ({type(exc).__name__}: {first}); "
                      "regenerate the file with `piddm generate` (or `piddm export-operator`)")


def _info_from_attrs(path: Path, f, partial: bool = False) -> DatasetInfo:
    try:
        return _parse_info(path, f, partial)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise _malformed(path, exc) from None


def _parse_info(path: Path, f, partial: bool) -> DatasetInfo:
    attrs = f.attrs
    missing = [k for k in ("problem", "channels", "resolution", "schema_version") if k not in attrs]
    if missing or "fields" not in f:
        what = ", ".join(missing) if missing else "dataset 'fields'"
        raise PiddmError(
            f"{path}: not a piddm-fem dataset (missing {what}); "
            "write it with `piddm generate` or `piddm sample`"
        )
    schema = int(attrs["schema_version"])
    if schema != SCHEMA_VERSION:
        raise PiddmError(
            f"{path}: schema version {schema}, this piddm-fem reads {SCHEMA_VERSION}; "
            "regenerate the file with this version"
        )
    if not partial and not bool(attrs.get("complete", False)):
        raise PiddmError(
            f"{path}: the file is marked incomplete (complete=false: an interrupted or concurrent "
            "writer); finish it with `piddm generate ... --resume` or regenerate it with --overwrite"
        )
    seed = attrs.get("seed", -1)
    boundary = json.loads(attrs.get("boundary", json.dumps(DEFAULT_BOUNDARY)))
    if len(boundary) != 2 or any(b not in BOUNDARY_TYPES for b in boundary):
        raise PiddmError(f"{path}: boundary {boundary} is not two of {', '.join(BOUNDARY_TYPES)} "
                         "(one per axis); regenerate the file with `piddm generate`")
    channels = json.loads(attrs["channels"])
    meta = json.loads(attrs.get("meta", "{}")) or default_meta(str(attrs["problem"]), channels)
    check_meta(path, meta, channels)
    return DatasetInfo(
        problem=str(attrs["problem"]),
        channels=channels,
        resolution=int(attrs["resolution"]),
        n_samples=int(f["fields"].shape[0]),
        seed=None if int(seed) < 0 else int(seed),
        source=str(attrs.get("source", "unknown")),
        params=json.loads(attrs.get("params", "{}")),
        solver_parameters=json.loads(attrs.get("solver_parameters", "{}")),
        boundary=list(boundary),
        meta=meta,
        version=str(attrs.get("version", "unknown")),
        schema_version=schema,
    )


FIELD_DTYPES = ("f8", "f4")  # how ``fields`` may be stored: float64, or float32 to halve a file


def create(path: str | os.PathLike, info: DatasetInfo, *, overwrite: bool = False, dtype: str = "f8"):
    """Create ``<path>.partial`` with every sample pending, ``fields`` stored as ``dtype`` (one of
    ``FIELD_DTYPES``); returns the open h5py.File. Call it inside ``exclusive(path)``."""
    if dtype not in FIELD_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {FIELD_DTYPES}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise PiddmError(f"{path} exists; pass --overwrite to replace it or --resume to complete it")
    tmp = partial_path(path)
    if tmp.exists() and not overwrite:
        raise PiddmError(f"{tmp} holds an interrupted run; pass --resume to complete it or "
                         "--overwrite to start afresh")
    if info.resolution < 3:
        raise PiddmError(f"resolution {info.resolution} is too small; use S >= 3 grid points per side")
    n, c, s = info.n_samples, len(info.channels), info.resolution
    if c * s * s * 8 >= 2**32:
        raise PiddmError(f"resolution {s}: one sample ({c * s * s * 8 / 2**30:.0f} GiB) exceeds "
                         f"HDF5's 4 GiB chunk limit; use S <= {int((2**32 / (8 * c)) ** 0.5)}")
    tmp.unlink(missing_ok=True)
    f = _h5py().File(tmp, "w")
    try:
        f.create_dataset("fields", shape=(n, c, s, s), dtype=dtype, chunks=(1, c, s, s), fillvalue=np.nan,
                         compression="gzip", compression_opts=4, shuffle=True)
        f.create_dataset("status", shape=(n,), dtype="i1", fillvalue=STATUS_PENDING)
        g = f.create_group("solver_info")
        g.create_dataset("iterations", shape=(n,), dtype="i8", fillvalue=-1)
        g.create_dataset("residual_norm", shape=(n,), dtype="f8", fillvalue=np.nan)
        g.create_dataset("time", shape=(n,), dtype="f8", fillvalue=np.nan)
        g.create_dataset("reason", shape=(n,), dtype=_h5py().string_dtype(), fillvalue="")
        attrs = asdict(info)
        attrs.pop("n_samples")
        attrs["seed"] = -1 if info.seed is None else info.seed
        for key in ("channels", "params", "solver_parameters", "boundary", "meta"):
            attrs[key] = json.dumps(attrs[key])
        if not info.meta:
            attrs["meta"] = json.dumps(default_meta(info.problem, info.channels))
        attrs["domain"] = np.asarray(DOMAIN)
        attrs["grid"] = "fields[n, c, j, i] at x_i = i/(S-1), y_j = j/(S-1)"
        f.attrs.update(attrs)
        f.attrs["complete"] = False
        f.flush()
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise
    return f


def open_partial(path: str | os.PathLike, info: DatasetInfo, dtype: str = "f8"):
    """Reopen ``<path>.partial`` for ``--resume`` (inside ``exclusive(path)``); its attributes must
    match ``info`` and its fields be stored as ``dtype``."""
    path = Path(path)
    tmp = partial_path(path)
    if path.exists():
        read_info(path)  # refuses a file that is not marked complete
        raise PiddmError(f"{path} is already complete; pass --overwrite to regenerate it")
    if not tmp.exists():
        raise PiddmError(f"nothing to resume: {tmp} does not exist; drop --resume to start afresh")
    f = _open(tmp, "r+")
    have = _info_from_attrs(tmp, f, partial=True)
    if have.version != info.version:
        f.close()
        raise PiddmError(f"cannot resume {tmp}: piddm-fem {have.version} wrote it and this is {info.version}, "
                         "whose samples may follow another recipe; pass --overwrite to start afresh")
    for key in ("problem", "channels", "resolution", "n_samples", "seed", "params"):
        if getattr(have, key) != getattr(info, key):
            f.close()
            raise PiddmError(
                f"cannot resume {tmp}: it has {key}={getattr(have, key)!r}, the command asks for "
                f"{getattr(info, key)!r}; repeat the original arguments or pass --overwrite"
            )
    if f["fields"].dtype != np.dtype(dtype):
        stored = f["fields"].dtype
        f.close()
        raise PiddmError(f"cannot resume {tmp}: it stores {stored} fields; "
                         f"{'add' if stored == np.float32 else 'drop'} --float32 or pass --overwrite")
    return f


def finalize(path: str | os.PathLike, f) -> None:
    """Mark the open partial file complete, close it and rename it into place atomically."""
    f.attrs["complete"] = True
    f.close()
    os.replace(partial_path(path), path)


def read_info(path: str | os.PathLike) -> DatasetInfo:
    path = Path(path)
    with _open(path) as f:
        return _info_from_attrs(path, f)


def _check_operator(path: Path, f, info: DatasetInfo) -> None:
    """A stored residual operator must be the file's problem, parameters, grid and channels."""
    if OPERATOR_GROUP not in f:
        return
    a = f[OPERATOR_GROUP].attrs
    have = (str(a["problem"]), json.loads(a["params"]), int(a["resolution"]), json.loads(a["channels"]))
    want = (info.problem, info.params, info.resolution, info.channels)
    if have != want:
        names = ("problem", "params", "resolution", "channels")
        diff = "; ".join(f"{n} {w!r} vs operator {h!r}" for n, h, w in zip(names, have, want) if h != w)
        raise PiddmError(f"{path}: the file's attributes disagree with its residual operator ({diff}); "
                         f"fix the attributes or re-export with `piddm export-operator {path}`")


def read(path: str | os.PathLike, indices=None) -> tuple[DatasetInfo, np.ndarray, np.ndarray]:
    """(info, fields[n, C, S, S], status[n]) for the given sample indices (all by default), with
    the checks of ``check_dataset`` applied to what is read."""
    path = Path(path)
    with _open(path) as f:
        info = _info_from_attrs(path, f)
        _check_operator(path, f, info)
        idx = np.arange(info.n_samples) if indices is None else np.asarray(indices, dtype=int)
        if idx.size and (idx.min() < 0 or idx.max() >= info.n_samples):
            raise PiddmError(
                f"{path}: sample index out of range 0..{info.n_samples - 1}; pick indices inside it"
            )
        if indices is None:
            fields = f["fields"][:].astype(np.float64, copy=False)
        else:
            uniq, inverse = np.unique(idx, return_inverse=True)
            fields = f["fields"][uniq][inverse].astype(np.float64, copy=False)
        status = f["status"][:][idx] if "status" in f else np.full(idx.size, STATUS_OK, "i1")
    check_fields(path, info, fields, status, idx)
    return info, fields, status


def check_dataset(path: str | os.PathLike, chunk: int = 64) -> DatasetInfo:
    """The checks every command that reads a dataset runs before it starts (validate,
    export-operator, teacher train, distill, infer, evaluation): a complete piddm-fem file whose
    fields have the shape its attributes give, finite on every ok sample, and whose stored
    residual operator (if any) has its problem, parameters, grid and channels. Reads in chunks."""
    path = Path(path)
    with _open(path) as f:
        info = _info_from_attrs(path, f)
        _check_operator(path, f, info)
        status = f["status"][:] if "status" in f else np.full(info.n_samples, STATUS_OK, "i1")
        for start in range(0, max(info.n_samples, 1), chunk):
            idx = np.arange(start, min(info.n_samples, start + chunk))
            check_fields(path, info, f["fields"][start:start + chunk], status[idx], idx)
    return info


def check_fields(where, info: DatasetInfo, fields: np.ndarray, status=None, indices=None) -> None:
    """Shape and finiteness checks; failed or pending samples may hold NaN. ``indices`` are the
    file indices of the rows (for the message)."""
    c, s = len(info.channels), info.resolution
    if fields.ndim != 4 or fields.shape[1:] != (c, s, s):
        raise PiddmError(
            f"{where}: fields have shape {tuple(fields.shape)}, expected (N, {c}, {s}, {s}) for "
            f"channels {info.channels} and resolution {s}; write all channels on the S x S grid"
        )
    good = np.ones(fields.shape[0], bool) if status is None else np.asarray(status) == STATUS_OK
    bad = ~np.isfinite(fields[good]).all(axis=(1, 2, 3))
    if bad.any():
        row = int(np.flatnonzero(good)[np.flatnonzero(bad)[0]])
        first = row if indices is None else int(indices[row])
        raise PiddmError(
            f"{where}: sample {first} (and {int(bad.sum()) - 1} more) contains NaN/Inf; "
            "regenerate those samples or drop them"
        )


def check_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Before any work, that ``write`` can write ``path``: ``checks.output_file``, and no
    interrupted run's partial file there (e.g. of ``piddm generate``) unless ``overwrite``."""
    path = checks.output_file(path, overwrite)
    if not overwrite and partial_path(path).exists():
        raise PiddmError(f"{partial_path(path)} is an unfinished file of an interrupted run; pass "
                         "--overwrite to replace it (or resume that run)")
    return path


def write(path: str | os.PathLike, info: DatasetInfo, fields: np.ndarray, *,
          overwrite: bool = False, extra: dict | None = None) -> None:
    """Write a whole file at once (model samples): partial file, then atomic rename. An
    interrupted run's partial file at ``path`` (e.g. of ``piddm generate``) is only replaced
    with ``overwrite``.

    ``extra`` maps dataset names to arrays stored beside ``fields`` (e.g. ensemble std)."""
    check_output(path, overwrite)
    info = replace(info, n_samples=int(fields.shape[0]))
    check_fields(path, info, fields)
    with exclusive(path):
        f = create(path, info, overwrite=overwrite)
        try:
            f["fields"][...] = fields
            f["status"][...] = STATUS_OK
            for name, arr in (extra or {}).items():
                f.create_dataset(name, data=np.asarray(arr))
        except BaseException:
            f.close()
            partial_path(path).unlink(missing_ok=True)
            raise
        finalize(path, f)


# -- the residual operator (written by piddm_fem.solvers.export, read by piddm_fem.residual) ----
OPERATOR_GROUP = "operator"


def write_operator(path: str | os.PathLike, op: dict, h5file=None) -> None:
    """Store an extracted operator in group ``operator`` of a dataset file (or of an open h5 file,
    the caller's to finish). A file on disk is rewritten as a copy that replaces it when complete:
    an interruption leaves the file as it was, never an operator with terms missing."""
    if h5file is not None:
        _operator_group(h5file, op)
        return
    path = Path(path).resolve()  # a link's target gets the operator
    with exclusive(path), deferred():
        tmp = path.with_name(path.name + ".operator.partial")
        try:
            if path.exists():
                shutil.copy2(path, tmp)  # with its permissions
            with _h5py().File(tmp, "a") as f:
                _operator_group(f, op)
            os.replace(tmp, path)
        except OSError as exc:
            raise PiddmError(f"cannot write the operator into {path}: {exc.strerror or exc}; free disk "
                             "space or choose a writable copy of the file") from None
        finally:
            tmp.unlink(missing_ok=True)


def _operator_group(f, op: dict) -> None:
    if OPERATOR_GROUP in f:
        del f[OPERATOR_GROUP]
    g = f.create_group(OPERATOR_GROUP)
    g.attrs.update({"problem": op["problem"], "params": json.dumps(op["params"]),
                    "resolution": op["resolution"], "channels": json.dumps(op["channels"]),
                    "unknown": op["unknown"], "n_terms": len(op["terms"]),
                    "structured": bool(op.get("structured", False)),
                    "schema_version": SCHEMA_VERSION})
    for name in ("connectivity", "lumped_mass", "bc_mask", "bc_values", "data_mask"):
        g.create_dataset(name, data=op[name])
    for n, (combo, tensor) in enumerate(op["terms"]):
        d = g.create_dataset(f"term{n}", data=tensor)
        d.attrs["channels"] = np.asarray(combo, dtype=np.int64)


def read_operator(path: str | os.PathLike) -> dict | None:
    """The operator stored in a dataset file, or None when the file holds none."""
    path = Path(path)
    with _open(path) as f:
        if OPERATOR_GROUP not in f:
            return None
        try:
            return _parse_operator(f[OPERATOR_GROUP])
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise _malformed(path, exc, "operator") from None


def _parse_operator(g) -> dict:
    a = g.attrs
    return {
        "problem": str(a["problem"]), "params": json.loads(a["params"]),
        "resolution": int(a["resolution"]), "channels": json.loads(a["channels"]),
        "unknown": int(a["unknown"]),
        **{name: g[name][:] for name in ("connectivity", "lumped_mass", "bc_mask", "bc_values")},
        # operators exported before data sides existed have none
        "data_mask": g["data_mask"][:] if "data_mask" in g else np.zeros_like(g["bc_mask"][:]),
        # older operators do not say whether their cells are the structured grid's: general path
        "structured": bool(a.get("structured", False)),
        "terms": [(tuple(int(c) for c in g[f"term{n}"].attrs["channels"]), g[f"term{n}"][:])
                  for n in range(int(a["n_terms"]))],
    }
