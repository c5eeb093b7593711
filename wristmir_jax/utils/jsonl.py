"""JSON-lines input and output with line numbers, and rejects files whose counts add up."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

from wristmir_jax.errors import UserError


@dataclass
class BadLine:
    """A line that could not be used, with the reason (never the line's text in messages)."""

    line: int
    reason: str
    raw: str | None = None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """Yields (line_number, object) for each non-blank line, or (line_number, BadLine).

    Bad bytes (non-UTF-8), invalid JSON and non-object lines become BadLine; the caller decides
    whether to reject or stop (--strict). A missing file raises UserError.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError("file not found", path=path)
    if os.path.isdir(path):
        raise UserError("is a directory, expected a .jsonl file", path=path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, BadLine(lineno, f"not valid UTF-8 (byte {e.start})")
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield lineno, BadLine(lineno, f"not valid JSON ({e.msg}, column {e.colno})", text)
                continue
            if not isinstance(obj, dict):
                yield lineno, BadLine(lineno, f"expected a JSON object, got {type(obj).__name__}", text)
                continue
            yield lineno, obj


def read_jsonl_strict(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a whole JSON-lines file; the first bad line raises UserError with its line number."""
    out = []
    for lineno, obj in iter_jsonl(path):
        if isinstance(obj, BadLine):
            raise UserError(obj.reason, path=os.fspath(path), line=lineno)
        out.append(obj)
    return out


def dumps(obj: Any) -> str:
    """Canonical JSON for output files: sorted keys, compact, deterministic."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def write_jsonl(path: str | os.PathLike, rows) -> int:
    """Writes rows atomically (temp file + rename). Returns the number of rows."""
    from wristmir_jax.utils.fs import atomic_write

    n = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write(dumps(row) + "\n")
            n += 1
    return n


@dataclass
class Rejects:
    """Collects rejected inputs with reasons; written next to the output as `<stem>.rejects.jsonl`.

    In strict mode the first rejection raises UserError instead (exit code 2).
    """

    source: str
    strict: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, line: int | None, reason: str, record: Any = None, id: str | None = None) -> None:
        if self.strict:
            raise UserError(reason + (f" (id {id})" if id else ""), path=self.source, line=line)
        row: dict[str, Any] = {"source": self.source, "line": line, "reason": reason}
        if id is not None:
            row["id"] = id
        if record is not None:
            row["record"] = record
        self.rows.append(row)

    def __len__(self) -> int:
        return len(self.rows)

    def write(self, path: str | os.PathLike) -> int:
        return write_jsonl(path, self.rows)


def rejects_path(out_path: str | os.PathLike) -> str:
    """`mined.jsonl` -> `mined.rejects.jsonl` (same folder)."""
    out_path = os.fspath(out_path)
    stem = out_path[: -len(".jsonl")] if out_path.endswith(".jsonl") else out_path
    return stem + ".rejects.jsonl"
