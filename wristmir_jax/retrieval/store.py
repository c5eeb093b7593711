"""The INDEX_DIR store: embeddings, ids, records and boxes of one embedded split, a fingerprint of
the model and config that made them, and (for large databases) a serialised ScaNN searcher.

Layout of INDEX_DIR:
  fingerprint.json     format/version, model params SHA-256, config SHA-256, dim, dtype, count,
                       split, and for every file below its shape, dtype, byte size and SHA-256
  .verified.json       cache of content checks: per file (inode, size, mtime, ctime) -> SHA-256
  global_img.npy       [N, D]      float16|float32  global image embeddings (L2-normalised)
  region_img.npy       [N, 3, D]   float16|float32  region image embeddings (schema.REGIONS order)
  crop_mask.npy        [N, 3]      float32          1 where the region crop exists
  global_txt.npy       [N, D]      float16|float32  report (global caption) text embeddings
  region_txt.npy       [N, 3, D]   float16|float32  region caption text embeddings
  ids.npy              [N]         unicode          item ids
  patients.npy         [N]         unicode          hashed patient id (16 hex chars; "" unknown)
  records.npy          [N, F]      int32            schema.encode_record of the mined findings
  boxes.npy            [N, 3, 4]   float32          region boxes in the frame of that image (NaN: none)
  images.npy           [N]         unicode          where the image is: "split/position" in the
                                                    fingerprint's data_dir, or a file path
  scann/               ScaNN searcher over global_img (only when N >= the exact-search limit)
  scann_<region>/      ScaNN searcher over region_img[:, r] of the items that have that crop, with
                       positions.npy (int32 index positions of its rows); built with scann/, so a
                       bone-conditioned query draws coarse candidates from both (coarse.py)

Everything is loaded with np.load(allow_pickle=False). Loading checks every file against the
fingerprint (exists, byte size, shape, dtype, count, then content SHA-256) and, when the caller
knows which model it holds, the model and config hashes and the dimension: a mismatch is a one-line
UserError, never a wrong answer. Content digests are streamed once per file state and cached in
.verified.json keyed by (inode, size, mtime, ctime): a rewrite, a swap (rename changes ctime and
inode) or a copy elsewhere is hashed again; an unchanged index is checked with one stat per file.

INDEX_DIR may be a URL (gs://...): it is written locally and uploaded with fingerprint.json last
(utils.fs.atomic_output_dir), and read from a local copy (utils.fs.local_dir) so that the arrays
can be memory-mapped and ScaNN can load its searcher.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.schema import NUM_REGIONS, RECORD_LEN, REGIONS
from wristmir_jax.utils import fs
from wristmir_jax.utils.fs import atomic_output_dir, atomic_write

FORMAT = "wristmir-index"
VERSION = 2  # 2: per-file content SHA-256
FINGERPRINT = "fingerprint.json"
VERIFIED_CACHE = ".verified.json"
SCANN_DIR = "scann"
POSITIONS = "positions.npy"
EMBEDDING_DTYPES = ("float16", "float32")

# name -> (rank, dtype or None for the embedding dtype)
_FILES: dict[str, tuple[int, str | None]] = {
    "global_img": (2, None),
    "region_img": (3, None),
    "crop_mask": (2, "float32"),
    "global_txt": (2, None),
    "region_txt": (3, None),
    "ids": (1, "unicode"),
    "patients": (1, "unicode"),
    "records": (2, "int32"),
    "boxes": (3, "float32"),
    "images": (1, "unicode"),
}


def hash_patient(patient_id) -> str:
    """A patient id as stored in an index (and in DATA_DIR, data.builder.patient_hash): SHA-256,
    16 hex chars, never the raw id; "" when there is none."""
    if patient_id is None or patient_id == "":
        return ""
    return hashlib.sha256(str(patient_id).encode("utf-8")).hexdigest()[:16]


def config_hash(config: Any) -> str:
    """SHA-256 of a config's canonical JSON (ConfigDict, dict or None)."""
    if config is None:
        return ""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass
class IndexArrays:
    """The arrays of an index, N items. Embeddings are float16 or float32 numpy arrays."""

    global_img: np.ndarray
    region_img: np.ndarray
    crop_mask: np.ndarray
    global_txt: np.ndarray
    region_txt: np.ndarray
    ids: np.ndarray
    patients: np.ndarray
    records: np.ndarray
    boxes: np.ndarray
    images: np.ndarray

    @property
    def count(self) -> int:
        return int(self.global_img.shape[0])

    @property
    def dim(self) -> int:
        return int(self.global_img.shape[1])

    def validate(self) -> None:
        """Raises ValueError when shapes disagree (a programming error, not user input)."""
        n, d = self.global_img.shape
        want = {"global_img": (n, d), "region_img": (n, NUM_REGIONS, d), "crop_mask": (n, NUM_REGIONS),
                "global_txt": (n, d), "region_txt": (n, NUM_REGIONS, d), "ids": (n,), "patients": (n,),
                "records": (n, RECORD_LEN), "boxes": (n, NUM_REGIONS, 4), "images": (n,)}
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"index array {name}: expected shape {shape}, got {got}")
        if len(set(self.ids.tolist())) != n:
            raise ValueError("index ids are not unique")


@dataclasses.dataclass
class Index:
    """A loaded index: arrays (memory-mapped), fingerprint, folder."""

    path: str
    arrays: IndexArrays
    fingerprint: dict[str, Any]

    @property
    def count(self) -> int:
        return self.arrays.count

    @property
    def dim(self) -> int:
        return self.arrays.dim

    @property
    def has_scann(self) -> bool:
        return self.fingerprint.get("scann") is not None

    def region_scann(self, region: str) -> dict[str, Any] | None:
        """The fingerprint entry of a region's ScaNN searcher (None: none was built)."""
        return (self.fingerprint.get("scann_regions") or {}).get(region)

    def position(self, item_id: str) -> int:
        hits = np.flatnonzero(self.arrays.ids == item_id)
        if hits.size == 0:
            raise UserError(f"id {item_id!r} is not in this index", path=self.path)
        return int(hits[0])

    def patient_codes(self) -> np.ndarray:
        """Dense int32 codes of the hashed patients (equal patient <=> equal code). An item
        without a patient ("") is a group of its own."""
        return patient_codes(self.arrays.patients)


def patient_codes(patients: np.ndarray) -> np.ndarray:
    """Hashed patient ids -> dense int32 codes; "" (unknown patient) gets a code of its own."""
    p = np.asarray(patients).astype(str)
    _, codes = np.unique(p, return_inverse=True)
    codes = codes.astype(np.int64)
    unknown = np.flatnonzero(p == "")
    codes[unknown] = codes.max(initial=-1) + 1 + np.arange(unknown.size)
    return codes.astype(np.int32)


def _dtype_name(a: np.ndarray) -> str:
    return "unicode" if a.dtype.kind == "U" else str(a.dtype)


def write_index(out_dir: str, arrays: IndexArrays, *, model: dict[str, Any], config: Any,
                split: str | None, overwrite: bool = False,
                scann_params: dict[str, Any] | None = None, build_scann: bool | None = None,
                extra: dict[str, Any] | None = None) -> dict:
    """Writes INDEX_DIR atomically and returns its fingerprint.

    model: {"params_sha256": ..., "workdir": ...}; config: the model config (hashed); extra:
    more JSON fields for the fingerprint (e.g. data_dir, so queries find the tokenizer).
    ScaNN is built over global_img when build_scann is True, or when None and the database is at
    least coarse.EXACT_SEARCH_LIMIT items; scann_params override the size rule (coarse.py).
    """
    from wristmir_jax.retrieval import coarse

    arrays.validate()
    dtype = str(arrays.global_img.dtype)
    if dtype not in EMBEDDING_DTYPES:
        raise UserError(f"embedding dtype {dtype} not in {EMBEDDING_DTYPES}", path=out_dir)
    if build_scann is None:
        build_scann = arrays.count >= coarse.EXACT_SEARCH_LIMIT
    with atomic_output_dir(out_dir, overwrite=overwrite, last=(FINGERPRINT,)) as tmp:
        files = {}
        for name, (_, kind) in _FILES.items():
            a = np.ascontiguousarray(getattr(arrays, name))
            if kind is None:
                a = a.astype(dtype, copy=False)
            elif kind != "unicode":
                a = a.astype(kind, copy=False)
            elif a.dtype.kind != "U":
                a = a.astype(str)
            fn = os.path.join(tmp, name + ".npy")
            with open(fn, "wb") as raw:
                w = _HashingWriter(raw)
                np.save(w, a, allow_pickle=False)
            files[name + ".npy"] = {"shape": list(a.shape), "dtype": _dtype_name(a),
                                    "bytes": os.path.getsize(fn), "sha256": w.hexdigest()}
        scann_info = region_info = None
        if build_scann:
            params = coarse.params_for_size(arrays.count, arrays.dim, scann_params)
            searcher, build_s = coarse.build_scann(np.asarray(arrays.global_img, np.float32), params)
            sdir = os.path.join(tmp, SCANN_DIR)
            coarse.save_scann(searcher, sdir)
            scann_info = {"params": dataclasses.asdict(params), "build_s": round(build_s, 3),
                          "files": {f: os.path.getsize(os.path.join(sdir, f))
                                    for f in sorted(os.listdir(sdir))},
                          "sha256": {f: file_sha256(os.path.join(sdir, f))
                                     for f in sorted(os.listdir(sdir))}}
            region_info = {}
            for r_i, region in enumerate(REGIONS):
                pos = np.flatnonzero(np.asarray(arrays.crop_mask[:, r_i]) > 0).astype(np.int32)
                if pos.size < 2:
                    continue
                rp = coarse.params_for_size(int(pos.size), arrays.dim, scann_params)
                rs, r_build = coarse.build_scann(np.asarray(arrays.region_img[pos, r_i], np.float32), rp)
                rdir = os.path.join(tmp, f"{SCANN_DIR}_{region}")
                coarse.save_scann(rs, rdir)
                np.save(os.path.join(rdir, POSITIONS), pos, allow_pickle=False)
                region_info[region] = {"params": dataclasses.asdict(rp), "build_s": round(r_build, 3),
                                       "count": int(pos.size),
                                       "files": {f: os.path.getsize(os.path.join(rdir, f))
                                                 for f in sorted(os.listdir(rdir))},
                                       "sha256": {f: file_sha256(os.path.join(rdir, f))
                                                  for f in sorted(os.listdir(rdir))}}
        fp = {
            "format": FORMAT, "version": VERSION,
            "model": dict(model), "config_sha256": config_hash(config),
            "dim": arrays.dim, "dtype": dtype, "count": arrays.count, "split": split,
            "regions": list(REGIONS), "record_len": RECORD_LEN,
            "files": files, "scann": scann_info, "scann_regions": region_info, **(extra or {}),
        }
        with atomic_write(os.path.join(tmp, FINGERPRINT)) as f:
            json.dump(fp, f, indent=2, sort_keys=True)
        # the files were hashed as written: record them as verified (renaming the folder keeps
        # each file's inode and ctime)
        _save_verified(tmp, {rel: _stat_key(os.path.join(tmp, rel)) | {"sha256": d}
                             for rel, d in _expected_digests(fp).items()})
    return fp


# --- content digests ---------------------------------------------------------------------
class _HashingWriter:
    """A write-only file object that hashes what passes through (np.save writes the header and
    the data through it, so the digest is the file's without reading it back)."""

    def __init__(self, f):
        self._f, self._h = f, hashlib.sha256()

    def write(self, b) -> int:
        mv = memoryview(b).cast("B")
        self._h.update(mv)
        return self._f.write(mv)

    def flush(self) -> None:
        self._f.flush()

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def file_sha256(path: str, chunk: int = 8 << 20) -> str:
    """Streamed SHA-256 of a file (8 MiB reads into one reused buffer)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def _stat_key(path: str) -> dict[str, int]:
    st = os.stat(path)
    return {"ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns}


def _expected_digests(fp: dict[str, Any]) -> dict[str, str]:
    """{relative path: sha256} of every file the fingerprint lists."""
    out = {fn: meta.get("sha256") for fn, meta in fp["files"].items()}
    if fp.get("scann") is not None:
        out.update({f"{SCANN_DIR}/{f}": d for f, d in (fp["scann"].get("sha256") or {}).items()})
    for region, info in (fp.get("scann_regions") or {}).items():
        out.update({f"{SCANN_DIR}_{region}/{f}": d for f, d in (info.get("sha256") or {}).items()})
    return out


def _load_verified(index_dir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(index_dir, VERIFIED_CACHE), encoding="utf-8") as f:
            out = json.load(f)
        return out if isinstance(out, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_verified(index_dir: str, entries: dict[str, Any]) -> None:
    try:  # a read-only index is verified every time, never refused
        with atomic_write(os.path.join(index_dir, VERIFIED_CACHE)) as f:
            json.dump(entries, f, sort_keys=True)
    except (OSError, UserError):
        pass


def verify_digests(index_dir: str, fp: dict[str, Any], *, use_cache: bool = True) -> dict[str, Any]:
    """Checks every listed file's SHA-256 against the fingerprint (UserError naming the first
    file that differs). A file whose (inode, size, mtime, ctime) matches the cache entry of a
    previous successful check is not read again. Returns {"hashed": n, "cached": n, "bytes": n}."""
    want = _expected_digests(fp)
    missing = sorted(rel for rel, d in want.items() if not d)
    if missing:
        raise UserError(f"fingerprint has no content digest for {missing[0]}; re-run `wristmir embed`",
                        path=index_dir)
    cache = _load_verified(index_dir) if use_cache else {}
    fresh: dict[str, Any] = {}
    stats = {"hashed": 0, "cached": 0, "bytes": 0}
    for rel, digest in sorted(want.items()):
        path = os.path.join(index_dir, rel)
        key = _stat_key(path)
        hit = cache.get(rel)
        if hit and hit.get("sha256") == digest and all(hit.get(k) == v for k, v in key.items()):
            fresh[rel] = hit
            stats["cached"] += 1
            continue
        got = file_sha256(path)
        stats["hashed"] += 1
        stats["bytes"] += key["size"]
        if got != digest:
            raise UserError(f"index file content differs from the fingerprint (sha256 {got[:12]}, "
                            f"expected {digest[:12]}): damaged or replaced; re-run `wristmir embed`",
                            path=path)
        fresh[rel] = key | {"sha256": got}
    if use_cache and fresh != cache:
        _save_verified(index_dir, fresh)
    return stats


def read_fingerprint(index_dir: str) -> dict[str, Any]:
    if not os.path.isdir(index_dir):
        raise UserError("index directory not found", path=index_dir)
    fp_path = os.path.join(index_dir, FINGERPRINT)
    if not os.path.exists(fp_path):
        raise UserError(f"not an index (no {FINGERPRINT})", path=index_dir)
    try:
        with open(fp_path, encoding="utf-8") as f:
            fp = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"unreadable fingerprint ({type(e).__name__})", path=fp_path) from None
    if not isinstance(fp, dict) or fp.get("format") != FORMAT:
        raise UserError("not a wristmir index fingerprint", path=fp_path)
    if fp.get("version") != VERSION:
        raise UserError(f"index format version {fp.get('version')} (this program reads {VERSION}); "
                        "re-run `wristmir embed`", path=fp_path)
    for key in ("dim", "dtype", "count", "files", "model", "config_sha256"):
        if key not in fp:
            raise UserError(f"fingerprint lacks {key!r}", path=fp_path)
    if fp.get("record_len") != RECORD_LEN or fp.get("regions") != list(REGIONS):
        raise UserError("index was built with another findings schema; re-run `wristmir embed`",
                        path=fp_path)
    return fp


def check_compatible(fp: dict[str, Any], index_dir: str, *, params_sha256: str | None = None,
                     config: Any = None, dim: int | None = None) -> None:
    """Raises UserError when the index was made by another model, config or dimension."""
    if params_sha256 is not None and fp["model"].get("params_sha256") != params_sha256:
        raise UserError(f"index was built by another model (params {str(fp['model'].get('params_sha256'))[:12]}, "
                        f"this model {params_sha256[:12]}); re-run `wristmir embed`", path=index_dir)
    if config is not None and fp["config_sha256"] != config_hash(config):
        raise UserError("index was built with another config; re-run `wristmir embed`", path=index_dir)
    if dim is not None and int(fp["dim"]) != int(dim):
        raise UserError(f"index dimension {fp['dim']} does not match the query dimension {dim}",
                        path=index_dir)


def load_index(index_dir: str, *, params_sha256: str | None = None, config: Any = None,
               dim: int | None = None, mmap: bool = True, verify: bool = True) -> Index:
    """Loads and checks INDEX_DIR (see the module docstring); UserError on any mismatch.
    verify=False skips only the content digests (benchmarks of the load itself)."""
    index_dir = os.fspath(index_dir)
    if fs.is_url(index_dir):
        if not fs.exists(fs.join(index_dir, FINGERPRINT)):
            raise UserError(f"not an index (no {FINGERPRINT})", path=index_dir)
        index_dir = fs.local_dir(index_dir)
    fp = read_fingerprint(index_dir)
    check_compatible(fp, index_dir, params_sha256=params_sha256, config=config, dim=dim)
    n, d, dtype = int(fp["count"]), int(fp["dim"]), fp["dtype"]
    if dtype not in EMBEDDING_DTYPES:
        raise UserError(f"fingerprint dtype {dtype!r} not in {EMBEDDING_DTYPES}", path=index_dir)
    loaded = {}
    for name, (rank, kind) in _FILES.items():
        fn = name + ".npy"
        path = os.path.join(index_dir, fn)
        meta = fp["files"].get(fn)
        if meta is None:
            raise UserError(f"fingerprint does not list {fn}", path=index_dir)
        if not os.path.exists(path):
            raise UserError("index file missing", path=path)
        size = os.path.getsize(path)
        if size != meta.get("bytes"):
            raise UserError(f"index file is {size} bytes, the fingerprint says {meta.get('bytes')} "
                            "(truncated or replaced)", path=path)
        try:
            a = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise UserError(f"unreadable index file ({e})".splitlines()[0], path=path) from None
        if a.ndim != rank or list(a.shape) != list(meta.get("shape", [])) or a.shape[0] != n:
            raise UserError(f"index file has shape {list(a.shape)}, expected {meta.get('shape')} "
                            f"with {n} items", path=path)
        want = dtype if kind is None else kind
        if _dtype_name(a) != want or meta.get("dtype") != want:
            raise UserError(f"index file has dtype {_dtype_name(a)}, expected {want}", path=path)
        if kind is None and a.shape[-1] != d:
            raise UserError(f"index file has dimension {a.shape[-1]}, the fingerprint says {d}",
                            path=path)
        loaded[name] = a
    arrays = IndexArrays(**loaded)
    if fp.get("scann") is not None:
        _check_scann_dir(os.path.join(index_dir, SCANN_DIR), fp["scann"])
    for region, info in (fp.get("scann_regions") or {}).items():
        if region not in REGIONS:
            raise UserError(f"fingerprint lists a ScaNN searcher for unknown region {region!r}",
                            path=index_dir)
        _check_scann_dir(os.path.join(index_dir, f"{SCANN_DIR}_{region}"), info)
    if verify:
        verify_digests(index_dir, fp)
    return Index(path=index_dir, arrays=arrays, fingerprint=fp)


def _check_scann_dir(sdir: str, info: dict[str, Any]) -> None:
    """Every file the fingerprint lists exists with its size, and nothing else is there."""
    if not os.path.isdir(sdir):
        raise UserError("ScaNN searcher folder missing", path=sdir)
    for f, size in info["files"].items():
        p = os.path.join(sdir, f)
        if not os.path.exists(p):
            raise UserError("ScaNN searcher file missing", path=p)
        if os.path.getsize(p) != size:
            raise UserError(f"ScaNN searcher file is {os.path.getsize(p)} bytes, the fingerprint "
                            f"says {size} (truncated or replaced)", path=p)
    extra = sorted(set(os.listdir(sdir)) - set(info["files"]))
    if extra:
        raise UserError(f"unexpected file {extra[0]} in the ScaNN searcher folder", path=sdir)


def index_bytes(index_dir: str, names: tuple[str, ...] | None = None) -> int:
    """Bytes on disk of the listed index files (all files and the ScaNN folder by default)."""
    total = 0
    for root, _, files in os.walk(index_dir):
        for f in files:
            if names is None or f in names:
                total += os.path.getsize(os.path.join(root, f))
    return total
