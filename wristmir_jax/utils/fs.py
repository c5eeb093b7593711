"""Paths for local folders and object storage (`gs://bucket/...` or any fsspec URL), and atomic
outputs: nothing half-written is ever left behind.

Local paths go through `os`; URLs through fsspec (gcsfs for gs://, which honours
STORAGE_EMULATOR_HOST). Orbax writes checkpoints to gs:// itself (tensorstore). Libraries that
read only POSIX files (ArrayRecord, the TFDS builder, ScaNN, numpy memory maps) get a local copy
of a remote folder from `local_dir` (a cache under WRISTMIR_CACHE_DIR, default
~/.cache/wristmir/staged, refreshed when the remote listing changes).

An object store has no atomic folder rename, so `atomic_output_dir` builds a URL output in a
local temporary folder and uploads it file by file with the folder's marker file (the dataset
meta or the index fingerprint, which readers open first) last: a reader never takes a partial
upload for a finished one, and a failed upload is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from typing import Any, IO, Iterable, Iterator

import fsspec

from wristmir_jax.errors import UserError
from wristmir_jax.utils.leftovers import clean_stale, tmp_prefix


# --- what kind of path ---------------------------------------------------------------------
def is_url(path: str | os.PathLike | None) -> bool:
    """True for `scheme://...` paths other than file:// (those are local)."""
    if path is None:
        return False
    p = os.fspath(path)
    return "://" in p and not p.startswith("file://")


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute; a URL unchanged (os.path.abspath would turn gs://b/w into
    ./gs:/b/w)."""
    p = os.fspath(path)
    if p.startswith("file://"):
        p = p[len("file://"):]
    return p.rstrip("/") if is_url(p) else os.path.abspath(p)


def join(base: str | os.PathLike, *parts: str) -> str:
    base = os.fspath(base)
    return posixpath.join(base, *parts) if is_url(base) else os.path.join(base, *parts)


def dirname(path: str | os.PathLike) -> str:
    p = absolute(path)
    return posixpath.dirname(p) if is_url(p) else os.path.dirname(p)


def basename(path: str | os.PathLike) -> str:
    p = absolute(path)
    return posixpath.basename(p) if is_url(p) else os.path.basename(p)


# --- errors from object storage -> one line --------------------------------------------------
def describe_error(e: BaseException) -> str:
    """One line for a storage exception: missing bucket/object, credentials, or the library's text."""
    code = getattr(e, "code", None)
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if code in (401, 403) or "credential" in text.lower() or "unauthorized" in text.lower():
        return f"access denied: check the credentials (GOOGLE_APPLICATION_CREDENTIALS or " \
               f"`gcloud auth application-default login`) ({text[:160]})"
    if isinstance(e, FileNotFoundError) or code == 404:
        return f"not found ({text[:160]})"
    return f"{type(e).__name__}: {text[:200]}"


@contextlib.contextmanager
def storage_errors(path: str) -> Iterator[None]:
    """Turns object-storage and credential exceptions into a one-line UserError naming `path`."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # gcsfs HttpError, google.auth errors, OSError, aiohttp errors
        if not is_url(path) and not isinstance(e, OSError):
            raise
        raise UserError(describe_error(e), path=path) from None


def check_credentials(env: dict | None = None) -> None:
    """A named credentials file that is missing or not JSON is a UserError up front (gcsfs would
    fall back to anonymous access and tensorstore would fail mid-run)."""
    env = os.environ if env is None else env
    cred = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not cred:
        return
    try:
        with open(cred, encoding="utf-8") as f:
            info = json.load(f)
    except OSError as e:
        raise UserError(f"credential error: GOOGLE_APPLICATION_CREDENTIALS file unreadable "
                        f"({e.strerror})", path=cred) from None
    except ValueError:
        raise UserError("credential error: GOOGLE_APPLICATION_CREDENTIALS is not a JSON key file",
                        path=cred) from None
    if not isinstance(info, dict) or "type" not in info:
        raise UserError("credential error: GOOGLE_APPLICATION_CREDENTIALS has no 'type' field",
                        path=cred)


def _fs(url: str):
    """(filesystem, path inside it) for a URL."""
    return fsspec.core.url_to_fs(url)


def check_bucket(url: str) -> None:
    """For gs:// (and gcs://, s3://): the credentials file is sound and the bucket exists;
    otherwise a one-line UserError before anything is written."""
    if not is_url(url):
        return
    scheme, rest = url.split("://", 1)
    if scheme in ("gs", "gcs"):
        check_credentials()
    if scheme not in ("gs", "gcs", "s3"):
        return
    bucket = rest.split("/", 1)[0]
    with storage_errors(url):
        fs, _ = _fs(url)
        found = fs.exists(bucket)
    if not found:
        raise UserError(f"bucket {bucket!r} does not exist", path=url)


# --- the operations ------------------------------------------------------------------------
def exists(path: str | os.PathLike) -> bool:
    p = os.fspath(path)
    if not is_url(p):
        return os.path.exists(p)
    with storage_errors(p):
        fs, q = _fs(p)
        return fs.exists(q)


def isdir(path: str | os.PathLike) -> bool:
    p = os.fspath(path)
    if not is_url(p):
        return os.path.isdir(p)
    with storage_errors(p):
        fs, q = _fs(p)
        return fs.isdir(q)


def listdir(path: str | os.PathLike) -> list[str]:
    """Names (not paths) in a folder, sorted."""
    p = os.fspath(path)
    if not is_url(p):
        return sorted(os.listdir(p))
    with storage_errors(p):
        fs, q = _fs(p)
        return sorted(posixpath.basename(x.rstrip("/")) for x in fs.ls(q, detail=False)
                      if x.rstrip("/") != q.rstrip("/"))


def size(path: str | os.PathLike) -> int:
    p = os.fspath(path)
    if not is_url(p):
        return os.path.getsize(p)
    with storage_errors(p):
        fs, q = _fs(p)
        return int(fs.size(q))


def makedirs(path: str | os.PathLike) -> None:
    """Creates a local folder; for URLs only checks the bucket (object stores have no folders)."""
    p = os.fspath(path)
    if is_url(p):
        check_bucket(p)
    else:
        os.makedirs(p, exist_ok=True)


def open_file(path: str | os.PathLike, mode: str = "r") -> IO:
    """A file object (text mode is UTF-8). Writes to a URL appear whole when the file is closed."""
    p = os.fspath(path)
    kw = {} if "b" in mode else {"encoding": "utf-8"}
    if not is_url(p):
        return open(p, mode, **kw)
    with storage_errors(p):
        return fsspec.open(p, mode, **kw).open()


def read_text(path: str | os.PathLike) -> str:
    with open_file(path, "r") as f:
        return f.read()


def read_bytes(path: str | os.PathLike) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def rmtree(path: str | os.PathLike) -> None:
    """Removes a folder (a URL prefix) and everything under it; missing is fine."""
    p = os.fspath(path)
    if not is_url(p):
        shutil.rmtree(p, ignore_errors=True)
        return
    with storage_errors(p):
        fs, q = _fs(p)
        if fs.exists(q):
            fs.rm(q, recursive=True)


def move(src: str, dst: str) -> None:
    """Moves a file or folder (on object storage: copy, then delete the source)."""
    if not is_url(src):
        shutil.move(src, dst)
        return
    with storage_errors(src):
        fs, q = _fs(src)
        fs.mv(q, _fs(dst)[1], recursive=True)


def _remote_listing(url: str) -> dict[str, int]:
    """{relative posix path: size} of every object under a URL prefix."""
    with storage_errors(url):
        fs, q = _fs(url)
        q = q.rstrip("/")
        found = fs.find(q, detail=True)
    return {k[len(q) + 1:]: int(v.get("size") or 0) for k, v in found.items()
            if k.startswith(q + "/")}


def upload_dir(local: str, url: str, *, last: Iterable[str] = ()) -> None:
    """Copies a local folder's files under `url`, the top-level files named in `last` after all
    others. On failure the files it uploaded are removed (nothing else under `url`)."""
    last = set(last)
    files = []
    for root, _, names in os.walk(local):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), local).replace(os.sep, "/")
            files.append(rel)
    files.sort(key=lambda r: (r in last, r))
    fs, q = _fs(url)
    q = q.rstrip("/")
    sent: list[str] = []
    try:
        with storage_errors(url):
            for rel in files:
                sent.append(f"{q}/{rel}")
                fs.put_file(os.path.join(local, rel), sent[-1])
    except BaseException:
        for obj in reversed(sent):
            with contextlib.suppress(Exception):
                fs.rm_file(obj)
        raise


def local_dir(path: str | os.PathLike) -> str:
    """A local folder holding `path`'s files: the path itself when local, else a cached copy of
    the URL prefix (downloaded again when the remote names or sizes change)."""
    p = absolute(path)
    if not is_url(p):
        return p
    listing = _remote_listing(p)
    if not listing:
        raise UserError("folder not found in object storage (no objects under this prefix)", path=p)
    root = os.environ.get("WRISTMIR_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "wristmir", "staged")
    target = os.path.join(root, hashlib.sha256(p.encode()).hexdigest()[:20])
    manifest = os.path.join(target, ".wristmir-staged.json")
    want = {"url": p, "files": listing}
    with contextlib.suppress(OSError, ValueError):
        with open(manifest, encoding="utf-8") as f:
            if json.load(f) == want:
                return target
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".stage-", dir=root)
    try:
        fs, q = _fs(p)
        q = q.rstrip("/")
        with storage_errors(p):
            for rel in sorted(listing):
                dst = os.path.join(tmp, *rel.split("/"))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                fs.get_file(f"{q}/{rel}", dst)
        with open(os.path.join(tmp, ".wristmir-staged.json"), "w", encoding="utf-8") as f:
            json.dump(want, f, sort_keys=True)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


class SyncedDir:
    """A local folder mirrored to a URL prefix (for writers that only write local files, such as
    tensorboardX and an appended metrics.jsonl): `sync()` uploads the files that changed since
    the last sync. `only`: the top-level names mirrored (downloaded at start, uploaded by sync).
    With a local path it is that folder and `sync()` does nothing."""

    def __init__(self, path: str | os.PathLike, *, only: Iterable[str] | None = None):
        self.url = absolute(path)
        self._only = None if only is None else tuple(only)
        self._sent: dict[str, tuple[int, int]] = {}
        if not is_url(self.url):
            self.local = self.url
            os.makedirs(self.local, exist_ok=True)
            return
        self.local = tempfile.mkdtemp(prefix="wristmir-sync-")
        fs, q = _fs(self.url)
        q = q.rstrip("/")
        for rel in _remote_listing(self.url):
            if self._wanted(rel):
                dst = os.path.join(self.local, *rel.split("/"))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                with storage_errors(self.url):
                    fs.get_file(f"{q}/{rel}", dst)
                st = os.stat(dst)
                self._sent[rel] = (st.st_size, st.st_mtime_ns)

    def _wanted(self, rel: str) -> bool:
        return self._only is None or rel.split("/", 1)[0] in self._only

    def sync(self) -> None:
        if not is_url(self.url):
            return
        fs, q = _fs(self.url)
        q = q.rstrip("/")
        for root, _, names in os.walk(self.local):
            for n in names:
                full = os.path.join(root, n)
                rel = os.path.relpath(full, self.local).replace(os.sep, "/")
                st = os.stat(full)
                if self._wanted(rel) and self._sent.get(rel) != (st.st_size, st.st_mtime_ns):
                    with storage_errors(self.url):
                        fs.put_file(full, f"{q}/{rel}")
                    self._sent[rel] = (st.st_size, st.st_mtime_ns)

    def close(self) -> None:
        self.sync()
        if is_url(self.url):
            shutil.rmtree(self.local, ignore_errors=True)


# --- atomic outputs ------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Writes to a temp file in the same folder and renames it over `path` on success. For a
    URL the file is written locally and uploaded as one object when the block succeeds."""
    path = os.fspath(path)
    if is_url(path):
        fd, tmp = tempfile.mkstemp(prefix="wristmir-upload-")
        try:
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
                yield f
            fs, q = _fs(path)
            with storage_errors(path):
                fs.put_file(tmp, q)
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        return
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
def atomic_output_dir(out_dir: str | os.PathLike, overwrite: bool = False,
                      last: Iterable[str] = ()) -> Iterator[str]:
    """Yields a temporary local folder; on success it replaces `out_dir`, on failure it is removed.

    An existing non-empty `out_dir` without `overwrite` is a UserError (exit code 2), raised before
    anything is written. An unwritable parent is a UserError too. For a URL `out_dir` (missing
    bucket or bad credentials: UserError up front) the folder is uploaded on success, the files
    named in `last` (the marker readers check first) after all others.
    """
    out_dir = absolute(out_dir)
    if is_url(out_dir):
        check_bucket(out_dir)
        existing = _remote_listing(out_dir)
        if existing and not overwrite:
            raise UserError("directory exists and is not empty (pass --overwrite to replace it)",
                            path=out_dir)
        tmp = tempfile.mkdtemp(prefix="wristmir-out-")
        try:
            yield tmp
            if existing:
                rmtree(out_dir)
            upload_dir(tmp, out_dir, last=last)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
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
    h = hashlib.sha256()
    with open_file(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def read_json_or_none(path: str | os.PathLike) -> Any:
    """The JSON in `path`, or None when it is missing or not valid JSON (optional outputs)."""
    try:
        with open_file(path, "r") as f:
            return json.load(f)
    except (OSError, ValueError, UserError):
        return None
