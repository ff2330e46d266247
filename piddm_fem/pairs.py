"""The pair bank: (eps, x0_teacher(eps)) on disk, resumable, partly refreshed during distillation.

Pair slot k holds the noise of index ``noise_index[k]`` of the bank's seed on the pair stream
(``edm.noise_for_indices``, PAIR_STREAM: never the noise that samples are drawn from)
and the teacher's Heun ODE solution from it, both in normalised space. The file records every
second spent in the teacher (``generation_seconds``), so the whole cost of distillation can be
reported. Refreshing replaces slots with fresh noise indices, never reusing one.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from piddm_fem.edm import PAIR_STREAM
from piddm_fem.errors import PiddmError
from piddm_fem.progress import progress_bar
from piddm_fem.teacher import teacher_pairs


def stored_settings(path) -> dict:
    """The distillation settings that made the bank at ``path`` (``DistillConfig`` names): its
    ``pairs``, ``seed`` and ``teacher_steps``."""
    import h5py

    with h5py.File(path, "r") as f:
        return {"pairs": f["eps"].shape[0], "seed": int(f.attrs["seed"]), "teacher_steps": int(f.attrs["num_steps"])}


class PairBank:
    """An HDF5 pair file plus its arrays in memory (eps, x0: [N, C, S, S] float32)."""

    def __init__(self, path, net, ckpt: dict, n: int, seed: int, num_steps: int, batch: int = 64):
        import h5py

        self.path, self.net, self.ckpt = Path(path), net, ckpt
        self.seed, self.num_steps, self.batch = seed, num_steps, batch
        shape = (n, len(ckpt["channels"]), ckpt["resolution"], ckpt["resolution"])
        identity = {"seed": seed, "stream": PAIR_STREAM, "num_steps": num_steps, "teacher_step": int(ckpt["step"]),
                    "teacher": ckpt["checksum"],
                    "problem": ckpt["problem"], "resolution": int(ckpt["resolution"])}
        if not self.path.exists():  # created whole under another name, then renamed
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".partial")
            with h5py.File(tmp, "w") as f:
                for name in ("eps", "x0"):
                    f.create_dataset(name, shape=shape, dtype="f4")
                f.create_dataset("noise_index", data=np.arange(n, dtype=np.int64))
                f.create_dataset("done", shape=(n,), dtype=bool)
                f.attrs.update(identity)
                f.attrs.update({"generation_seconds": 0.0, "next_index": n, "nfe": 0})
            tmp.replace(self.path)
        try:
            self.file = h5py.File(self.path, "r+")
        except OSError as exc:
            if "lock" in str(exc).lower():
                raise PiddmError(f"another process is using {self.path}; wait for it to finish or "
                                 "distil into another --out") from None
            raise PiddmError(f"{self.path} is not a readable pair bank ({str(exc).splitlines()[0]}); "
                             "delete it to generate the pairs again") from None
        have = {k: self.file.attrs.get(k) for k in identity}
        if "eps" not in self.file or self.file["eps"].shape != shape or any(have[k] != v for k, v in identity.items()):
            self.file.close()
            raise PiddmError(f"{self.path} holds pairs of another teacher, seed or size; "
                             "delete it or distil into another --out")
        self.eps = torch.from_numpy(self.file["eps"][:])
        self.x0 = torch.from_numpy(self.file["x0"][:])

    def __len__(self) -> int:
        return self.eps.shape[0]

    @property
    def generation_seconds(self) -> float:
        return float(self.file.attrs["generation_seconds"])

    def _generate(self, slots: np.ndarray, noise: np.ndarray, bar=None, task=None) -> None:
        for start in range(0, len(slots), self.batch):
            s, idx = slots[start:start + self.batch], noise[start:start + self.batch]
            t0 = time.perf_counter()
            eps, x0, nfe = teacher_pairs(self.net, self.ckpt, self.seed, idx, self.num_steps, PAIR_STREAM)
            order = np.argsort(s)  # h5py writes need increasing indices
            self.file["eps"][s[order]] = eps.cpu().numpy()[order]
            self.file["x0"][s[order]] = x0.float().cpu().numpy()[order]
            self.file["noise_index"][s[order]] = idx[order]
            self.file["done"][s[order]] = True
            a = self.file.attrs
            a["generation_seconds"] = float(a["generation_seconds"]) + time.perf_counter() - t0
            a["nfe"] = nfe
            self.file.flush()
            self.eps[s], self.x0[s] = eps.cpu(), x0.float().cpu()
            if bar is not None:
                bar.advance(task, len(s))

    def fill(self, progress: bool = True) -> None:
        """Generate every slot not yet done (resumes an interrupted bank)."""
        todo = np.flatnonzero(~self.file["done"][:])
        if not todo.size:
            return
        with progress_bar(disable=not progress) as bar:
            task = bar.add_task("teacher pairs", total=len(self), completed=len(self) - todo.size,
                                status=f"N_s={self.num_steps}")
            self._generate(todo, self.file["noise_index"][:][todo], bar, task)

    def refresh(self, fraction: float, rng: np.random.Generator) -> int:
        """Replace a random ``fraction`` of the slots by pairs from fresh noise indices."""
        k = max(1, int(round(fraction * len(self))))
        slots = rng.choice(len(self), size=k, replace=False)
        start = int(self.file.attrs["next_index"])
        self.file.attrs["next_index"] = start + k
        self._generate(slots, np.arange(start, start + k, dtype=np.int64))
        return k

    def close(self) -> None:
        self.file.close()
