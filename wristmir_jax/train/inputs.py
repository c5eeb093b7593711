"""Training inputs: resumable host iterators and their conversion to global jax.Arrays.

`SourceBatches` walks any random-access source (len + getitem, e.g. data.synthetic.
SyntheticSource) in seeded per-epoch permutations; batch k is a pure function of (seed, k), and
each process materialises only its rows of the global batch. Its state is {"batch": k}, saved in
every checkpoint, so a resumed run sees exactly the batches an uninterrupted one would.
The built TFDS dataset goes through data.pipeline (Grain) with the same get_state/set_state
contract; see `make_train_iterator`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from wristmir_jax.train.mesh import BATCH_AXES


class SourceBatches:
    """Endless, resumable batches of a random-access source (this process's rows only)."""

    def __init__(self, source: Any, global_batch_size: int, *, seed: int, shuffle: bool = True,
                 process_index: int | None = None, process_count: int | None = None):
        self.source = source
        self.n = len(source)
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.process_index = jax.process_index() if process_index is None else int(process_index)
        self.process_count = jax.process_count() if process_count is None else int(process_count)
        if self.global_batch_size % self.process_count:
            raise ValueError(f"global batch {global_batch_size} not divisible by "
                             f"{self.process_count} processes")
        self.local_batch_size = self.global_batch_size // self.process_count
        self._batch = 0
        self._perm_epoch = -1
        self._perm = None

    def _index(self, pos: int) -> int:
        epoch, off = divmod(pos, self.n)
        if not self.shuffle:
            return off
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return int(self._perm[off])

    def batch_indices(self, k: int) -> list[int]:
        start = k * self.global_batch_size + self.process_index * self.local_batch_size
        return [self._index(start + j) for j in range(self.local_batch_size)]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        examples = [self.source[i] for i in self.batch_indices(self._batch)]
        self._batch += 1
        return {k: np.stack([e[k] for e in examples]) for k in examples[0]}

    def get_state(self) -> dict:
        return {"batch": self._batch, "seed": self.seed, "n": self.n,
                "global_batch_size": self.global_batch_size}

    def set_state(self, state: dict) -> None:
        if int(state["n"]) != self.n or int(state["global_batch_size"]) != self.global_batch_size:
            raise ValueError("data-iterator state is from a different dataset or batch size")
        self._batch = int(state["batch"])


def to_global(host_batch: dict, mesh: Mesh) -> dict:
    """Process-local numpy rows -> global jax.Arrays sharded over (data, fsdp) on axis 0.
    Host-only keys (strings, e.g. `id`) are dropped."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    out = {}
    for k, v in host_batch.items():
        v = np.asarray(v)
        if v.dtype.kind in "USO":
            continue
        spec = P(BATCH_AXES, *([None] * (v.ndim - 1)))
        out[k] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), v)
    return out
