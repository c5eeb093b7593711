"""Encoding for retrieval: a whole split of DATA_DIR into an INDEX_DIR (batched, jitted, sharded
over the local devices, each process taking its slice, gathered to process 0), and single queries
(an image file with optional localizer boxes or a drawn box, a free text or region caption).

The model must be the one the index was built with: `load_query_model` restores the workdir,
hashes its parameters and compares them, the model config and the dimension with the index's
fingerprint (a mismatch is a UserError, never a wrong answer).
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.retrieval import store
from wristmir_jax.retrieval.query import QueryEmbeddings
from wristmir_jax.schema import REGION_INDEX
from wristmir_jax.utils import fs
from wristmir_jax.utils.log import get_logger
from wristmir_jax.utils.progress import track

log = get_logger("wristmir.embed")
EMBED_KEYS = ("global_img", "region_img", "global_txt", "region_txt")
_MODEL_KEYS = ("image", "crops", "global_tokens", "global_mask", "region_tokens", "region_mask")


def _local_mesh():
    import jax

    devs = jax.local_devices()
    return jax.sharding.Mesh(np.array(devs), ("data",))


def make_encode_fn(model, params):
    """(jitted fn(params, batch) -> embeddings dict, params placed replicated, device count)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = _local_mesh()
    repl = NamedSharding(mesh, P())
    params = jax.device_put(params, repl)

    def fn(p, batch):
        out = model.encode(p, batch)
        return {k: out[k] for k in EMBED_KEYS}

    return jax.jit(fn), params, mesh


def _gather_to_zero(local: dict[str, np.ndarray], n_local: int) -> dict[str, np.ndarray] | None:
    """Concatenates every process's rows in process order on process 0 (None elsewhere)."""
    import jax

    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    counts = np.asarray(multihost_utils.process_allgather(np.array([n_local], np.int64))).reshape(-1)
    m = int(counts.max())
    out = {}
    for k, v in local.items():
        if v.dtype.kind == "U":  # strings travel as fixed-width UTF-32 code points
            width = int(np.asarray(multihost_utils.process_allgather(
                np.array([v.dtype.itemsize // 4], np.int64))).max())
            v = v.astype(f"<U{max(width, 1)}").view(np.uint32).reshape(len(v), -1)
        pad = np.zeros((m - v.shape[0],) + v.shape[1:], v.dtype)
        allv = np.asarray(multihost_utils.process_allgather(np.concatenate([v, pad])))
        rows = np.concatenate([allv[i, :counts[i]] for i in range(len(counts))])
        if local[k].dtype.kind == "U":
            rows = np.ascontiguousarray(rows).view(f"<U{rows.shape[1]}").reshape(-1)
        out[k] = rows
    return out if jax.process_index() == 0 else None


def embed_split(workdir: str, data_dir: str, split: str, out_dir: str, *, dtype: str = "float16",
                batch_size: int = 64, overwrite: bool = False, build_scann: bool | None = None,
                scann_params: dict[str, Any] | None = None) -> dict | None:
    """Encodes every example of `split` and writes INDEX_DIR; returns the fingerprint (process
    0; None on other processes)."""
    return embed_splits(workdir, data_dir, {split: out_dir}, dtype=dtype, batch_size=batch_size,
                        overwrite=overwrite, build_scann=build_scann,
                        scann_params=scann_params)[split]


def embed_splits(workdir: str, data_dir: str, outputs: dict[str, str], *, dtype: str = "float16",
                 batch_size: int = 64, overwrite: bool = False, build_scann: bool | None = None,
                 scann_params: dict[str, Any] | None = None) -> dict[str, dict | None]:
    """`embed_split` for several splits ({split: INDEX_DIR}) with one model restore and one
    compiled encoder. Every output folder is checked before anything is encoded."""
    from wristmir_jax.train.checkpoint import params_sha256, restore_for_inference

    if dtype not in store.EMBEDDING_DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(store.EMBEDDING_DTYPES)}")
    if batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    if not outputs:
        raise UserError("no split to embed")
    if len(set(map(fs.absolute, outputs.values()))) < len(outputs):
        raise UserError("each split needs its own output folder")
    for out_dir in outputs.values():
        fs.check_bucket(fs.absolute(out_dir))
        if fs.isdir(out_dir) and fs.listdir(out_dir) and not overwrite:
            raise UserError("directory exists and is not empty (pass --overwrite to replace it)",
                            path=out_dir)
    model, params, cfg = restore_for_inference(workdir)
    sha = params_sha256(params)
    fn, params, mesh = make_encode_fn(model, params)
    text_cache = None
    if model.text_frozen:  # a frozen text tower runs once per distinct caption
        from wristmir_jax.models.text_cache import TextFeatureCache

        text_cache = TextFeatureCache(model, params)
    return {split: _embed_one(fn, params, mesh, text_cache, sha, cfg, workdir, data_dir,
                              split, out_dir, dtype=dtype, batch_size=batch_size,
                              overwrite=overwrite, build_scann=build_scann,
                              scann_params=scann_params)
            for split, out_dir in outputs.items()}


def _embed_one(fn, params, mesh, text_cache, sha, cfg, workdir, data_dir, split, out_dir, *,
               dtype, batch_size, overwrite, build_scann, scann_params) -> dict | None:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from wristmir_jax.data.features import to_training_example
    from wristmir_jax.data.pipeline import process_slice
    from wristmir_jax.data.source import DatasetSource

    src = DatasetSource(data_dir, split)
    n = len(src)
    if n == 0:
        raise UserError(f"split {split!r} is empty", path=data_dir)
    start, end = process_slice(n, jax.process_index(), jax.process_count(), drop_remainder=False)
    n_dev = mesh.devices.size
    bs = -(-batch_size // n_dev) * n_dev  # a multiple of the local devices
    shard = NamedSharding(mesh, P("data"))

    if text_cache is not None:  # the fewest tower calls; very large slices fill per batch
        text_cache.prefill_split(src, start, end)
    parts: dict[str, list] = {k: [] for k in EMBED_KEYS + ("crop_mask", "ids", "patients", "records",
                                                          "boxes", "images")}
    t0 = time.perf_counter()
    batches = range(start, end, bs)
    for b0 in track(batches, total=len(batches), desc=f"embed {split}"):
        idx = list(range(b0, min(b0 + bs, end)))
        stored = [src.stored(i) for i in idx]
        ex = [to_training_example(s) for s in stored]
        m = len(ex)
        host = {}
        for k in _MODEL_KEYS:
            a = np.stack([e[k] for e in ex])
            if m < bs:
                a = np.concatenate([a, np.zeros((bs - m,) + a.shape[1:], a.dtype)])
            host[k] = a
        if text_cache is not None:
            host = text_cache.attach(host)
        batch = {k: jax.device_put(v, shard) for k, v in host.items()}
        out = fn(params, batch)
        for k in EMBED_KEYS:
            parts[k].append(np.asarray(out[k])[:m].astype(dtype))
        mask = np.stack([e["crop_mask"] for e in ex]).astype(np.float32)
        boxes = np.stack([np.asarray(s["boxes"], np.float32) for s in stored])
        boxes[mask <= 0] = np.nan
        parts["crop_mask"].append(mask)
        parts["boxes"].append(boxes)
        parts["records"].append(np.stack([e["record"] for e in ex]).astype(np.int32))
        parts["ids"].append(np.array([str(e["id"]) for e in ex]))
        parts["patients"].append(np.array([_text(s.get("patient_hash", b"")) for s in stored]))
        parts["images"].append(np.array([f"{split}/{i}" for i in idx]))
    local = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}
    elapsed = time.perf_counter() - t0
    log.info("encoded %d examples in %.1fs (%.1f/s) on %d device(s)", end - start, elapsed,
             (end - start) / max(elapsed, 1e-9), n_dev)
    full = _gather_to_zero(local, end - start)
    fp = None
    if full is not None:
        arrays = store.IndexArrays(**{k: full[k] for k in parts})
        fp = store.write_index(out_dir, arrays, model={"params_sha256": sha, "workdir": fs.absolute(workdir)},
                               config=cfg.model, split=split, overwrite=overwrite,
                               build_scann=build_scann, scann_params=scann_params,
                               extra={"data_dir": fs.absolute(data_dir),
                                      "embed_s": round(elapsed, 2)})
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("wristmir-embed-written")
    return fp


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


# --- queries --------------------------------------------------------------------------------
class QueryModel:
    """The index's model restored for queries, with its tokenizer and dataset sizes."""

    def __init__(self, index: store.Index, workdir: str | None = None, data_dir: str | None = None):
        import jax

        from wristmir_jax.train.checkpoint import params_sha256, restore_for_inference

        fp = index.fingerprint
        workdir = workdir or fp["model"].get("workdir")
        if not workdir or not fs.isdir(workdir):
            raise UserError("the index's model workdir is not available; pass --workdir", path=workdir or index.path)
        self.model, params, self.cfg = restore_for_inference(workdir)
        store.check_compatible(fp, index.path, params_sha256=params_sha256(params),
                               config=self.cfg.model, dim=self.model.embed_dim)
        self.params = params
        self.data_dir = data_dir or fp.get("data_dir")
        self.meta: dict[str, Any] = {}
        self._tok = None
        if self.data_dir and fs.isdir(self.data_dir):
            from wristmir_jax.data.source import read_meta

            self.meta = read_meta(self.data_dir)
        self._img = jax.jit(self.model.encode_image)
        self._crops = jax.jit(self.model.encode_crops)
        self._crop = jax.jit(self.model.encode_crop)
        self._gtxt = jax.jit(self.model.encode_global_text)
        self._rtxt = jax.jit(self.model.encode_region_text)

    @property
    def tokenizer(self):
        if self._tok is None:
            if not self.data_dir or not fs.isdir(self.data_dir):
                raise UserError("text queries need the dataset's tokenizer; pass --data DATA_DIR",
                                path=self.data_dir or None)
            from wristmir_jax.data.tokenizer import load

            self._tok = load(fs.local_dir(self.data_dir))
        return self._tok

    def encode_text(self, text: str, region: str | None = None) -> np.ndarray:
        """f32[D]: the global text tower, or the region text tower for a region caption."""
        from wristmir_jax.data.tokenizer import tokenize

        if not text.strip():
            raise UserError("empty text query")
        ids, mask = tokenize(self.tokenizer, [text], self.model.max_text_len)
        if region is None:
            return np.asarray(self._gtxt(self.params, ids, mask))[0]
        r = REGION_INDEX[region]
        return np.asarray(self._rtxt(self.params, ids, mask, np.array([r], np.int32)))[0]

    def encode_image_file(self, path: str, *, laterality: str | None = None, localizer: str | None = None,
                          box: Sequence[float] | None = None, box_region: str | None = None
                          ) -> tuple[QueryEmbeddings, dict[str, Any]]:
        """An image file -> query embeddings and what was done (boxes, crop sources, the
        prepared image for panels). Boxes come from the localizer workdir when given; a drawn
        box (original pixels) replaces the crop of `box_region`."""
        from wristmir_jax.imaging.crops import crop_square, extract_crops
        from wristmir_jax.imaging.io import load_image
        from wristmir_jax.imaging.preprocess import canonical_flip, prepare

        img = load_image(path)
        h, w = img.shape
        size, csize = self.model.image_size, self.model.crop_size
        margin = float(self.meta.get("crop_margin", 0.2))
        min_score = float(self.meta.get("min_box_score", 0.5))
        boxes, scores = {}, {}
        if localizer:
            from wristmir_jax.localize.localizer import Localizer
            from wristmir_jax.train.checkpoint import restore_for_inference

            pred = Localizer.load(localizer, restore_for_inference,
                                  batch_size=1).predict([img], [laterality])[0]
            boxes, scores = pred["boxes"], pred["scores"]
        cr = extract_crops(img, boxes, scores, laterality, size=csize, margin=margin, min_score=min_score)
        prepared, geo = prepare(img, laterality, size)
        crops = cr.crops[None, ..., None].astype(np.float32)
        g = np.array(self._img(self.params, prepared[None, ..., None]))
        reg = np.array(self._crops(self.params, crops))
        mask = cr.mask[None].copy()
        # crop boxes are in the canonical frame at original scale; panels draw the prepared image
        shown = [None if b is None else [b[0] * geo.scale + geo.pad_x, b[1] * geo.scale + geo.pad_y,
                                         b[2] * geo.scale + geo.pad_x, b[3] * geo.scale + geo.pad_y]
                 for b in cr.boxes]
        if box is not None:
            from wristmir_jax.schema import SchemaError, validate_box

            try:
                validate_box(list(box), w, h, where="--box")
            except SchemaError as e:
                raise UserError(str(e), path=path) from None
            if box_region is None:
                raise UserError("--box needs --region naming the bone it outlines")
            r = REGION_INDEX[box_region]
            x = img[:, ::-1] if canonical_flip(laterality) else img
            b = list(box)
            if canonical_flip(laterality):
                b = [w - b[2], b[1], w - b[0], b[3]]
            crop = crop_square(x, b, csize, margin)[None, ..., None].astype(np.float32)
            reg[0, r] = np.asarray(self._crop(self.params, crop, np.array([r], np.int32)))[0]
            mask[0, r] = 1.0
            shown[r] = geo.box_to_processed(list(box))
        info = {"prepared": prepared, "boxes": shown, "crop_source": list(cr.source),
                "localized": bool(localizer)}
        if box is not None:
            info["crop_source"][REGION_INDEX[box_region]] = "drawn"
        return QueryEmbeddings(g, reg, mask, None), info
