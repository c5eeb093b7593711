"""In-memory synthetic training examples for tests and benchmarks: no files, no tokenizer folder.

`SyntheticSource` is a Grain random-access source (len + getitem, picklable): example `i` is a
pure function of `(seed, i)`, so the same Grain pipeline code that reads the built dataset runs
over it. Each example is a valid random findings record (schema.encode_record), its canonical
captions (reports.captions), token ids from a hashing word tokenizer (`hash_tokenize`, the
BERT special-token layout), and a cheap procedural image whose content follows the record: a
fracture draws a lucent line across the bone, a cast a dense mesh shell, hardware a bright plate.
Crops are cut from the image at the (jittered) bone boxes, the same way the builder does.

`synthetic_batches` stacks consecutive examples into host numpy batches with exactly the keys,
dtypes and shapes of BUILD_NOTES "Batch". `write_raw_inputs` writes the same kind of cases as
build inputs on disk (PNG images, manifest.jsonl, mined.jsonl, boxes.jsonl) for build tests and
the input benchmark.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Iterator

import numpy as np
from scipy import ndimage

from wristmir_jax import schema
from wristmir_jax.reports.captions import caption_id, captions as make_captions

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
NUM_SPECIAL = 5
_WORD_RE = re.compile(r"\w+|[^\w\s]")

# Where the bones sit in a prepared (canonical orientation) image, as fractions of its side.
# Region boxes are [x0, y0, x1, y1] fractions; the drawing below matches them.
_BOXES = {"distal_radius": (0.22, 0.24, 0.54, 0.60),
          "distal_ulna": (0.50, 0.32, 0.76, 0.64),
          "ulnar_styloid": (0.52, 0.28, 0.74, 0.48)}


def hash_tokenize(text: str, max_len: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower-cased words and punctuation -> ([CLS] ids... [SEP] + padding, mask), int32[max_len].

    A word's id is a stable hash into [NUM_SPECIAL, vocab_size), so equal texts give equal ids
    without a vocabulary file. Long texts are cut keeping the final [SEP].
    """
    if vocab_size <= NUM_SPECIAL:
        raise ValueError(f"vocab_size must exceed {NUM_SPECIAL}, got {vocab_size}")
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    words = _WORD_RE.findall(text.lower())[: max_len - 2]
    ids = [CLS_ID]
    for w in words:
        h = int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=4).digest(), "big")
        ids.append(NUM_SPECIAL + h % (vocab_size - NUM_SPECIAL))
    ids.append(SEP_ID)
    out = np.full(max_len, PAD_ID, np.int32)
    mask = np.zeros(max_len, np.int32)
    out[: len(ids)] = ids
    mask[: len(ids)] = 1
    return out, mask


def random_findings(rng: np.random.Generator) -> tuple[dict, dict]:
    """A random schema-valid findings pair with roughly clinical frequencies."""
    regions = {}
    p_fracture = {"distal_radius": 0.45, "distal_ulna": 0.18, "ulnar_styloid": 0.15}
    for name in schema.REGIONS:
        r = schema.empty_region()
        u = rng.random()
        if u < p_fracture[name]:
            r["fracture"] = "present" if rng.random() < 0.8 else "uncertain"
            if name == "ulnar_styloid":
                r["pattern"] = "avulsion" if rng.random() < 0.8 else None
            else:
                choices = ["buckle", "greenstick", "complete", "salter_harris", "plastic_bowing", None]
                r["pattern"] = choices[int(rng.choice(6, p=[0.35, 0.15, 0.15, 0.2, 0.05, 0.1]))]
            if r["pattern"] == "salter_harris":
                r["salter_harris"] = int(rng.choice([1, 2, 2, 2, 3, 4]))
            tri = (None, False, True)
            r["displaced"] = tri[int(rng.integers(3))]
            r["angulated"] = tri[int(rng.integers(3))]
            r["healing"] = bool(rng.random() < 0.15)
        regions[name] = r
    g = schema.empty_global()
    g["laterality"] = (None, "left", "right")[int(rng.choice(3, p=[0.1, 0.45, 0.45]))]
    g["cast"] = bool(rng.random() < 0.1)
    g["hardware"] = bool(rng.random() < 0.03)
    g["soft_tissue_swelling"] = bool(rng.random() < 0.25)
    g["other_fracture"] = bool(rng.random() < 0.05)
    return regions, g


def _fill_rect(img: np.ndarray, yy, xx, x0, y0, x1, y1, value: float) -> None:
    img[(xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)] = value


def _draw(rng: np.random.Generator, regions: dict, g: dict, size: int, shift: tuple[float, float]
          ) -> np.ndarray:
    """A procedural radiograph in canonical orientation, f32[size,size] in [0,1]."""
    dx, dy = shift
    yy, xx = np.meshgrid((np.arange(size) + 0.5) / size - dy, (np.arange(size) + 0.5) / size - dx,
                         indexing="ij")
    width = 0.42 if g["soft_tissue_swelling"] else 0.36
    soft = np.exp(-(((xx - 0.49) / width) ** 8)) * (yy > 0.05)
    img = 0.06 + 0.22 * soft
    # Radius: epiphysis above a lucent physis, metaphysis and shaft below.
    _fill_rect(img, yy, xx, 0.30, 0.30, 0.48, 0.34, 0.72)
    _fill_rect(img, yy, xx, 0.31, 0.355, 0.47, 1.0, 0.68)
    _fill_rect(img, yy, xx, 0.345, 0.40, 0.435, 1.0, 0.5)  # medullary cavity
    # Ulna with its styloid nub.
    _fill_rect(img, yy, xx, 0.56, 0.44, 0.68, 1.0, 0.66)
    _fill_rect(img, yy, xx, 0.585, 0.48, 0.655, 1.0, 0.5)
    _fill_rect(img, yy, xx, 0.60, 0.36, 0.66, 0.44, 0.62)
    # Carpal ossicles.
    for cx, cy, rad in ((0.40, 0.20, 0.05), (0.55, 0.21, 0.045), (0.47, 0.12, 0.04)):
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < rad ** 2] = 0.6
    lines = {"distal_radius": (0.30, 0.49, 0.45), "distal_ulna": (0.55, 0.69, 0.52),
             "ulnar_styloid": (0.59, 0.67, 0.40)}
    for name, (x0, x1, y) in lines.items():
        r = regions[name]
        if r["fracture"] == "absent":
            continue
        depth = 0.35 if r["fracture"] == "present" else 0.15
        thick = 0.012 if r["pattern"] != "buckle" else 0.02
        band = (xx >= x0) & (xx < x1) & (np.abs(yy - y) < thick)
        img[band] -= depth
        if r["displaced"]:
            sl = (xx >= x0) & (xx < x1) & (yy > y + thick) & (yy < y + 0.05)
            img[sl] += 0.08
        if r["healing"]:
            img[(xx >= x0 - 0.02) & (xx < x1 + 0.02) & (np.abs(yy - y) < 0.03)] += 0.1
    if g["cast"]:
        shell = (np.abs(xx - 0.49) < width + 0.05) & (yy > 0.3)
        mesh = 0.05 * (np.sin(xx * 180) * np.sin(yy * 180) > 0)
        img = img + shell * (0.15 + mesh)
    if g["hardware"]:
        _fill_rect(img, yy, xx, 0.37, 0.55, 0.41, 0.85, 0.98)
    img = img + rng.normal(0.0, 0.02, img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def crop_box(img: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Bilinear resample of the pixel box [x0,y0,x1,y1] of img f32[H,W] to f32[size,size]."""
    x0, y0, x1, y1 = box
    ys = y0 + (np.arange(size) + 0.5) * (y1 - y0) / size - 0.5
    xs = x0 + (np.arange(size) + 0.5) * (x1 - x0) / size - 0.5
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"))
    return ndimage.map_coordinates(img, grid, order=1, mode="constant", cval=0.0).astype(np.float32)


class SyntheticSource:
    """Grain random-access source of synthetic training examples (no batch axis).

    `source[i]` is deterministic in (seed, i): a dict with image f32[H,W,1], crops f32[3,h,w,1],
    crop_mask f32[3], boxes f32[3,4] (the crops' boxes in image pixels, zero where missing),
    global_tokens/global_mask i32[L], region_tokens/region_mask i32[3,L], record i32[RECORD_LEN],
    global_caption_id i32[], region_caption_id i32[3], id str.
    """

    def __init__(self, num_records: int = 1024, *, image_size: int = 256, crop_size: int = 128,
                 max_len: int = 32, vocab_size: int = 1024, seed: int = 0,
                 p_missing_styloid: float = 0.1):
        if num_records <= 0:
            raise ValueError(f"num_records must be positive, got {num_records}")
        self.num_records = int(num_records)
        self.image_size = int(image_size)
        self.crop_size = int(crop_size)
        self.max_len = int(max_len)
        self.vocab_size = int(vocab_size)
        self.seed = int(seed)
        self.p_missing_styloid = float(p_missing_styloid)

    def __len__(self) -> int:
        return self.num_records

    def __repr__(self) -> str:
        return (f"SyntheticSource(num_records={self.num_records}, image_size={self.image_size}, "
                f"crop_size={self.crop_size}, max_len={self.max_len}, "
                f"vocab_size={self.vocab_size}, seed={self.seed})")

    def findings(self, index: int) -> tuple[dict, dict]:
        """The findings of example `index` (what its record encodes)."""
        return random_findings(np.random.default_rng([self.seed, int(index), 0]))

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self.num_records:
            raise IndexError(f"index {index} out of range for {self.num_records} records")
        regions, g = self.findings(index)
        rng = np.random.default_rng([self.seed, index, 1])
        s, c, L = self.image_size, self.crop_size, self.max_len
        shift = tuple(rng.uniform(-0.04, 0.04, 2))
        image = _draw(rng, regions, g, s, shift)
        crops = np.zeros((schema.NUM_REGIONS, c, c), np.float32)
        crop_mask = np.ones(schema.NUM_REGIONS, np.float32)
        boxes = np.zeros((schema.NUM_REGIONS, 4), np.float32)
        if rng.random() < self.p_missing_styloid:
            crop_mask[schema.REGION_INDEX["ulnar_styloid"]] = 0.0
        for i, name in enumerate(schema.REGIONS):
            if crop_mask[i] == 0:
                continue
            fx0, fy0, fx1, fy1 = _BOXES[name]
            box = ((fx0 + shift[0]) * s, (fy0 + shift[1]) * s, (fx1 + shift[0]) * s,
                   (fy1 + shift[1]) * s)
            crops[i] = crop_box(image, box, c)
            boxes[i] = box
        caps = make_captions(regions, g)
        gt, gm = hash_tokenize(caps["global"], L, self.vocab_size)
        rt = np.zeros((schema.NUM_REGIONS, L), np.int32)
        rm = np.zeros((schema.NUM_REGIONS, L), np.int32)
        for i, name in enumerate(schema.REGIONS):
            rt[i], rm[i] = hash_tokenize(caps[name], L, self.vocab_size)
        return {
            "image": image[..., None],
            "crops": crops[..., None],
            "crop_mask": crop_mask,
            "boxes": boxes,
            "global_tokens": gt,
            "global_mask": gm,
            "region_tokens": rt,
            "region_mask": rm,
            "record": schema.encode_record(regions, g),
            "global_caption_id": np.int32(caption_id(caps["global"])),
            "region_caption_id": np.array([caption_id(caps[n]) for n in schema.REGIONS], np.int32),
            "id": np.str_(f"synthetic-{self.seed}-{index:07d}"),
        }


def stack_examples(examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Examples (no batch axis) -> one batch dict with a leading batch axis."""
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def synthetic_batches(batch_size: int, image_size: int = 256, crop_size: int = 128,
                      max_len: int = 32, vocab_size: int = 1024, seed: int = 0, *,
                      num_batches: int | None = None, num_records: int = 1 << 20
                      ) -> Iterator[dict[str, np.ndarray]]:
    """Host numpy batches of consecutive synthetic examples (example ids wrap at num_records).

    Batch k holds examples k*batch_size ... (k+1)*batch_size-1 of `SyntheticSource(num_records,
    ..., seed=seed)`; endless unless `num_batches` is given.
    """
    src = SyntheticSource(num_records, image_size=image_size, crop_size=crop_size,
                          max_len=max_len, vocab_size=vocab_size, seed=seed)
    k = 0
    while num_batches is None or k < num_batches:
        idx = [(k * batch_size + j) % num_records for j in range(batch_size)]
        yield stack_examples([src[i] for i in idx])
        k += 1


RAW_SPLITS: tuple[str, ...] = ("train", "train", "train", "val", "test")


def write_raw_inputs(folder: str, n: int = 10, width: int = 72, height: int = 88, seed: int = 0,
                     splits: tuple[str, ...] = RAW_SPLITS) -> dict:
    """Writes `n` synthetic cases as `wristmir build` inputs under `folder`: images/<id>.png
    (original orientation: left wrists mirrored back), manifest.jsonl (split i -> splits[i %
    len]), mined.jsonl (findings + canonical captions) and boxes.jsonl (bone boxes in original
    pixels, score 0.9). Returns {"paths": {name: path}, "manifest"|"mined"|"boxes": rows}."""
    from PIL import Image

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    src = SyntheticSource(n, image_size=16, crop_size=8, seed=seed)
    side = max(width, height)
    manifest, mined, boxes = [], [], []
    for i in range(n):
        regions, g = src.findings(i)
        img = _draw(np.random.default_rng([seed, i, 7]), regions, g, side, (0.0, 0.0))[:height, :width]
        left = g["laterality"] == "left"
        if left:
            img = img[:, ::-1]
        rid = f"case{i:03d}"
        rel = os.path.join("images", rid + ".png")
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(os.path.join(folder, rel))
        manifest.append({"id": rid, "patient_id": f"P{i // 2}", "study_id": f"S{i}", "image": rel,
                         "report": "FINDINGS: synthetic case.", "view": schema.VIEWS[i % 3],
                         "laterality": g["laterality"], "age_years": float(5 + i % 12),
                         "split": splits[i % len(splits)]})
        mined.append({"id": rid, "regions": regions, "global": g,
                      "captions": make_captions(regions, g), "miner": "synthetic"})
        bx, sc = {}, {}
        for r, (x0, y0, x1, y1) in _BOXES.items():
            b = [x0 * side, y0 * side, min(x1 * side, width), min(y1 * side, height)]
            bx[r] = [width - b[2], b[1], width - b[0], b[3]] if left else b
            sc[r] = 0.9
        boxes.append({"id": rid, "boxes": bx, "scores": sc})
    paths = {}
    for name, rows in (("manifest", manifest), ("mined", mined), ("boxes", boxes)):
        paths[name] = os.path.join(folder, f"{name}.jsonl")
        with open(paths[name], "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return {"paths": paths, "manifest": manifest, "mined": mined, "boxes": boxes}
