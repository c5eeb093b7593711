"""Random access to a built dataset (DATA_DIR) without TensorFlow: `DatasetSource(data_dir,
split)[i]` is training example i of the split (BUILD_NOTES "Batch" fields, no batch axis).

It wraps `tfds.builder_from_directory(DATA_DIR).as_data_source(split)` (ArrayRecord random
access). Every shard is checked when the source opens (present, readable, holding the number
of records the dataset info says); a record that fails to read later is reported with its
shard's file name. Either way the error is a one-line UserError naming the shard.

DATA_DIR may be a URL (gs://...): ArrayRecord and the TFDS builder read only local files, so the
folder is copied once into a local cache (utils.fs.local_dir) and read from there.
"""

from __future__ import annotations

import bisect
import json
import os
import threading
from typing import Any

from wristmir_jax.data.features import to_training_example
from wristmir_jax.errors import UserError
from wristmir_jax.utils import fs

META_FILE = "wristmir_meta.json"


def read_meta(data_dir: str | os.PathLike) -> dict[str, Any]:
    """DATA_DIR/wristmir_meta.json: sizes (image, crop, max_len, vocab, record_len), counts."""
    path = fs.join(os.fspath(data_dir), META_FILE)
    if not fs.exists(path):
        raise UserError(f"not a wristmir dataset (no {META_FILE}; build it with `wristmir build`)",
                        path=os.fspath(data_dir))
    try:
        return json.loads(fs.read_text(path))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read dataset metadata ({e})", path=path) from None


def open_builder(data_dir: str | os.PathLike):
    import tensorflow_datasets as tfds

    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise UserError("dataset directory not found", path=data_dir)
    try:
        return tfds.builder_from_directory(data_dir)
    except Exception as e:  # tfds raises several types for a missing/broken dataset_info.json
        raise UserError(f"not a readable TFDS dataset ({type(e).__name__}: {e})",
                        path=data_dir) from None


def check_shards(builder, split: str, full: bool = False) -> list[str]:
    """Opens each ArrayRecord shard of `split` and checks its record count (with full=True also
    reads every record). Returns the shard paths; raises UserError naming a bad shard."""
    from array_record.python import array_record_module

    info = builder.info.splits[split]
    paths = []
    for fi in info.file_instructions:
        path = fi.filename
        paths.append(path)
        if not os.path.exists(path):
            raise UserError("ArrayRecord shard missing", path=path)
        try:
            reader = array_record_module.ArrayRecordReader(path)
            n = reader.num_records()
            if full:
                reader.read_all()
            reader.close()
        except Exception as e:  # array_record raises RuntimeError/ValueError for corruption
            raise UserError(f"corrupt ArrayRecord shard ({_short(e)})", path=path) from None
        if n != fi.examples_in_shard:
            raise UserError(f"corrupt ArrayRecord shard (holds {n} records, the dataset info says "
                            f"{fi.examples_in_shard})", path=path)
    return paths


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


class DatasetSource:
    """Grain random-access source over one split of a built dataset (picklable: worker
    processes reopen the ArrayRecord files lazily)."""

    def __init__(self, data_dir: str | os.PathLike, split: str):
        self.url = fs.absolute(data_dir)
        self.meta = read_meta(self.url)  # checked before a remote folder is copied
        self.data_dir = fs.local_dir(self.url)
        self.split = split
        builder = open_builder(self.data_dir)
        if split not in builder.info.splits:
            raise UserError(f"no split {split!r} (splits: {', '.join(sorted(builder.info.splits))})",
                            path=self.data_dir)
        self._shards = check_shards(builder, split)
        lengths = [fi.take for fi in builder.info.splits[split].file_instructions]
        self._starts = [sum(lengths[:i]) for i in range(len(lengths))]
        self._len = sum(lengths)
        self._source = None
        self._lock = threading.Lock()
        self._warm_up()

    def _data_source(self):
        # Grain reads with a thread pool; opening (and TFDS's lazy imports) must happen once.
        with self._lock:
            if self._source is None:
                self._source = open_builder(self.data_dir).as_data_source(self.split)
            return self._source

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_source"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._warm_up()

    def _warm_up(self) -> None:
        """Opens the files and decodes one record on the calling (main) thread, so the lazy
        imports inside TFDS (PIL, array_record) never race between Grain's reader threads
        (concurrent first imports there deadlock). Runs on creation and on unpickling in a
        worker process. A failure is left for the read that needs the record to report, with
        its shard's name."""
        try:
            if self._len:
                self._data_source()[0]
        except Exception:  # reported by the read that needs it (stored() names the shard)
            pass

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"DatasetSource({self.data_dir!r}, {self.split!r}, n={self._len})"

    def shard_of(self, index: int) -> str:
        return self._shards[bisect.bisect_right(self._starts, index) - 1]

    def stored(self, index: int) -> dict[str, Any]:
        """The stored example (TFDS numpy form: bytes for text, uint8 images, all fields)."""
        index = int(index)
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for split {self.split!r} of {self._len}")
        try:
            return self._data_source()[index]
        except Exception as e:
            raise UserError(f"corrupt ArrayRecord shard: record {index} failed to read "
                            f"({_short(e)})", path=self.shard_of(index)) from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        return to_training_example(self.stored(index))
