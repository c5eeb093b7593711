"""Grain input pipeline: per-process shard -> seeded shuffle per epoch -> repeat -> numpy
augmentation seeded per example and epoch -> batching -> worker processes; and the transfer of
host batches into global `jax.Array`s sharded over the mesh's data axes.

Order of operations (a MapDataset until the worker stage, so every batch is a pure function of
(seed, process_index, process_count, step)):
  source[start:end]              this process's contiguous slice (grain's even split: disjoint
                                 slices covering the split; with drop_remainder every process
                                 gets floor(n / process_count) examples, so all processes run
                                 the same number of steps)
  .shuffle(seed)                 a new permutation every epoch (grain reseeds per epoch)
  .repeat(num_epochs)            None = endless
  .random_map(augment, seed')    the Generator is seeded from (seed', position in the repeated
                                 stream), i.e. per example and epoch; seed' mixes in the process
  .batch(global // process_count)
  .to_iter_dataset().mp_prefetch(worker_count)

The iterator is a grain DatasetIterator: `get_state()` is a small JSON-able dict and
`set_state()` resumes exactly; `iterator_state`/`restore_iterator` are the helpers the trainer's
composite orbax checkpoint uses (grain.checkpoint.CheckpointSave/Restore work too).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from wristmir_jax.data.augment import AugmentConfig, augment_example
from wristmir_jax.data.features import HOST_ONLY_KEYS
from wristmir_jax.errors import UserError


def _mark_flags_parsed() -> None:
    """Grain reads absl flags in worker processes; an unparsed FLAGS object raises there."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _exit_with_parent() -> None:
    """Grain's worker processes outlive a trainer that is killed (a SIGKILLed run left a worker
    with 7.7 GB resident, using CPU, for hours): watch the parent and leave when it is gone."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_init(worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    _mark_flags_parsed()
    _exit_with_parent()


def stack_batch(examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Examples (no batch axis) -> a batch dict with a leading batch axis."""
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


@dataclasses.dataclass(frozen=True)
class _Augment:
    """Picklable random-map transform (worker processes receive it)."""

    cfg: AugmentConfig

    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return augment_example(example, rng, self.cfg)


def process_slice(n: int, process_index: int, process_count: int,
                  drop_remainder: bool) -> tuple[int, int]:
    """[start, end) of this process's examples (grain's even split over processes)."""
    from grain.sharding import ShardOptions
    from grain._src.core.sharding import even_split

    return even_split(n, ShardOptions(shard_index=process_index, shard_count=process_count,
                                      drop_remainder=drop_remainder))


def open_source(data_dir_or_source: Any, split: str):
    """A DATA_DIR path becomes a DatasetSource for `split`; anything with len/getitem (e.g.
    SyntheticSource) is used as is."""
    if isinstance(data_dir_or_source, (str, os.PathLike)):
        from wristmir_jax.data.source import DatasetSource

        return DatasetSource(data_dir_or_source, split)
    if not (hasattr(data_dir_or_source, "__len__") and hasattr(data_dir_or_source, "__getitem__")):
        raise TypeError(f"expected a dataset directory or a random-access source, got "
                        f"{type(data_dir_or_source).__name__}")
    return data_dir_or_source


def make_dataset(data_dir_or_source: Any, split: str = "train", *, global_batch_size: int,
                 seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                 augment: bool = True, augment_config: AugmentConfig | None = None,
                 process_index: int | None = None, process_count: int | None = None,
                 drop_remainder: bool = True):
    """The MapDataset of batches for this process (no worker stage); see the module docstring."""
    import grain

    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise UserError(f"global batch size {global_batch_size} must be a positive multiple of "
                        f"the process count {process_count}")
    if num_epochs is not None and num_epochs <= 0:
        raise UserError(f"num_epochs must be positive or None, got {num_epochs}")
    per_process = global_batch_size // process_count
    source = open_source(data_dir_or_source, split)
    start, end = process_slice(len(source), process_index, process_count, drop_remainder)
    if end - start < (per_process if drop_remainder else 1):
        raise UserError(f"split {split!r} gives process {process_index} of {process_count} only "
                        f"{end - start} examples, fewer than one batch of {per_process}")
    ds = grain.MapDataset.source(source)[start:end]
    if shuffle:
        ds = ds.shuffle(seed=_mix(seed, 0))
    ds = ds.repeat(num_epochs)
    if augment:
        ds = ds.random_map(_Augment(augment_config or AugmentConfig()),
                           seed=_mix(seed, 1 + process_index))
    return ds.batch(per_process, drop_remainder=drop_remainder, batch_fn=stack_batch)


def _mix(seed: int, stream: int) -> int:
    """A 32-bit seed for one random stream of the pipeline (grain wants [0, 2**32))."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream]).generate_state(1)[0])


def make_pipeline(data_dir_or_source: Any, split: str = "train", *, global_batch_size: int,
                  seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                  augment: bool = True, worker_count: int = 2,
                  process_index: int | None = None, process_count: int | None = None,
                  drop_remainder: bool = True, augment_config: AugmentConfig | None = None,
                  worker_buffer_size: int = 2):
    """A checkpointable grain DatasetIterator of host batches (dicts of numpy arrays with the
    per-process batch size global_batch_size // process_count; `id` a numpy str array).

    process_index/process_count default to jax.process_index()/process_count(); pass them to
    simulate other processes. worker_count=0 runs everything in this process. Close iterators
    with worker processes (`it.close()` where available) when done early.
    """
    ds = make_dataset(data_dir_or_source, split, global_batch_size=global_batch_size, seed=seed,
                      shuffle=shuffle, num_epochs=num_epochs, augment=augment,
                      augment_config=augment_config, process_index=process_index,
                      process_count=process_count, drop_remainder=drop_remainder)
    it_ds = ds.to_iter_dataset()
    if worker_count > 0:
        import grain

        _mark_flags_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count,
                                         per_worker_buffer_size=worker_buffer_size),
            worker_init_fn=_worker_init)
    return iter(it_ds)


def iterator_state(it) -> bytes:
    """The iterator's position as JSON bytes (for a checkpoint)."""
    return json.dumps(it.get_state(), sort_keys=True).encode("utf-8")


def restore_iterator(it, state: bytes | str | Mapping) -> Any:
    """Moves a freshly made iterator (same arguments) to a saved position; returns it."""
    if isinstance(state, (bytes, str)):
        state = json.loads(state)
    it.set_state(dict(state))
    return it


def to_global_batch(host_batch: Mapping[str, np.ndarray], mesh, data_axes: Sequence[str] = ("data",),
                    host_only: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """This process's slice of a batch -> global jax.Arrays, the leading (batch) axis sharded
    over `data_axes` of `mesh`, other axes replicated. Host-only keys (`id`) are dropped."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    is_host = host_only or (lambda k: k in HOST_ONLY_KEYS)
    out = {}
    axes = tuple(data_axes)
    for k, v in host_batch.items():
        if is_host(k):
            continue
        v = np.asarray(v)
        if v.dtype.kind in "USO":
            continue
        sharding = NamedSharding(mesh, P(axes, *([None] * (v.ndim - 1))))
        out[k] = jax.make_array_from_process_local_data(sharding, v)
    return out
