"""Atomic outputs: nothing half-written is ever left behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, IO, Iterator

from wristmir_jax.errors import UserError
from wristmir_jax.utils.leftovers import clean_stale, tmp_prefix


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Writes to a temp file in the same folder and renames it over `path` on success."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        clean_stale(folder, ".tmp-", dirs=False)
        fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(".tmp-"), dir=folder)
    except OSError as e:
        raise UserError(f"cannot write here ({e.strerror})", path=path) from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yields a temporary sibling folder; on success it replaces `out_dir`, on failure it is removed.

    An existing non-empty `out_dir` without `overwrite` is a UserError (exit code 2), raised before
    anything is written. An unwritable parent is a UserError too.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise UserError("exists and is not a directory", path=out_dir)
        if os.listdir(out_dir) and not overwrite:
            raise UserError("directory exists and is not empty (pass --overwrite to replace it)",
                            path=out_dir)
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        prefix = f".{os.path.basename(out_dir)}.tmp-"
        clean_stale(parent, prefix, dirs=True)  # left by a killed run (utils/leftovers.py)
        tmp = tempfile.mkdtemp(prefix=tmp_prefix(prefix), dir=parent)
    except OSError as e:
        raise UserError(f"cannot create output directory ({e.strerror})", path=out_dir) from None
    try:
        yield tmp
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def read_json_or_none(path: str | os.PathLike) -> Any:
    """The JSON in `path`, or None when it is missing or not valid JSON (optional outputs)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
