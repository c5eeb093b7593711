"""The anatomy of a drawn box: which bone (distal radius, distal ulna, ulnar styloid) or "other"
a region of interest outlines, so that `search --box` without `--region` can condition on it.

Features: the box's square crop (the same crop_square + margin as the dataset's bone crops, in
the canonical right-wrist frame) through the contrastive model's crop tower once per bone id,
concatenated: f32[3 * D], plus the box's geometry in the canonical frame (centre, width and
height as fractions of the image, log aspect: `box_geometry`). A crop tower with per-bone weights
or a region embedding answers each id differently, and how well a crop matches each bone's view
tells the bones apart; where the box lies and how large it is separates what the crop alone
confuses (a loose styloid box and the ulna around it; measured: 0.74 -> see BUILD_NOTES). With
`roi=True` (the default) the features also hold the box's ROI-pooled global spatial embedding
(RegionMIR's region-of-interest pooling): the whole image through the global tower
(`encode_spatial`), the L2-normalised locations averaged with the box's coverage of each cell,
f32[D]. That carries what surrounds the box at the scale of the whole wrist (on a lateral view
the radius and ulna boxes overlap, and the crop alone looks the same for both); a model trained
with the `region_grounding` term has been taught which locations are which bone.
Head: a two-layer MLP (hidden 128, GELU) trained with Adam on these features. `finetune=True`
also updates the crop tower's projection (local_image_proj) with the head, starting from the
contrastive weights; the rest of the tower stays frozen (CPU budget).

Training boxes per image and bone: jittered copies of the bone's box (each side scaled 0.8-1.25,
centre shifted up to 15% of the side) labelled with the bone, and random boxes (side 5-40% of the
image, aspect 0.6-1.6) overlapping no bone box (IoU < 0.1) labelled "other".

Stored in a folder: head.safetensors (the head and, when fine-tuned, the projection) and
meta.json (classes, the contrastive model's params SHA-256, crop size and margin, the training
and test figures). Loading checks the model hash: a classifier of another model is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.schema import REGIONS
from wristmir_jax.utils.fs import atomic_write

CLASSES: tuple[str, ...] = REGIONS + ("other",)
OTHER = len(REGIONS)
HEAD_FILE = "head.safetensors"
META_FILE = "meta.json"


# --- boxes -------------------------------------------------------------------------------------
def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def jitter_box(box: Sequence[float], w: int, h: int, rng: np.random.Generator) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2 + rng.uniform(-0.15, 0.15) * bw
    cy = (y0 + y1) / 2 + rng.uniform(-0.15, 0.15) * bh
    bw *= rng.uniform(0.8, 1.25)
    bh *= rng.uniform(0.8, 1.25)
    out = [max(0.0, cx - bw / 2), max(0.0, cy - bh / 2), min(float(w), cx + bw / 2), min(float(h), cy + bh / 2)]
    return out if out[2] - out[0] >= 2 and out[3] - out[1] >= 2 else [x0, y0, x1, y1]


def random_other_box(bone_boxes: Sequence[Sequence[float]], w: int, h: int,
                     rng: np.random.Generator, tries: int = 50) -> list[float] | None:
    for _ in range(tries):
        side = rng.uniform(0.05, 0.4) * min(w, h)
        aspect = rng.uniform(0.6, 1.6)
        bw, bh = side * np.sqrt(aspect), side / np.sqrt(aspect)
        if bw >= w or bh >= h:
            continue
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        box = [x0, y0, x0 + bw, y0 + bh]
        if all(iou(box, b) < 0.1 for b in bone_boxes):
            return box
    return None


def sample_boxes(bone_boxes: dict[str, Sequence[float]], w: int, h: int, rng: np.random.Generator,
                 jitter_per_bone: int = 3, random_per_image: int = 3) -> list[tuple[list[float], int]]:
    """(box, class index) pairs for one image: jittered bone boxes and random "other" boxes."""
    out = []
    for r_i, r in enumerate(REGIONS):
        if bone_boxes.get(r) is not None:
            out += [(jitter_box(bone_boxes[r], w, h, rng), r_i) for _ in range(jitter_per_bone)]
    known = [b for b in bone_boxes.values() if b is not None]
    for _ in range(random_per_image):
        b = random_other_box(known, w, h, rng)
        if b is not None:
            out.append((b, OTHER))
    return out


def box_geometry(box: Sequence[float], w: int, h: int, laterality: str | None) -> np.ndarray:
    """f32[5]: centre x, centre y, width, height (fractions of the image, canonical right-wrist
    frame) and log(width / height) of a box in original pixels."""
    from wristmir_jax.imaging.preprocess import canonical_flip

    x0, y0, x1, y1 = (float(v) for v in box)
    if canonical_flip(laterality):
        x0, x1 = w - x1, w - x0
    bw, bh = max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)
    return np.array([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, bw / w, bh / h, np.log(bw / bh)], np.float32)


def roi_features(model, params, img: np.ndarray, boxes: Sequence[Sequence[float]],
                 laterality: str | None, spatial_fn=None) -> np.ndarray:
    """f32[K, D]: each box's (original pixels) ROI-pooled global spatial embedding of the image:
    the canonical image as the dataset stores it, `encode_spatial`, then the average of the
    locations weighted by the box's coverage of each cell, L2-normalised (zero for a box that
    covers no cell)."""
    from wristmir_jax.data.features import to_uint8
    from wristmir_jax.imaging.preprocess import prepare
    from wristmir_jax.losses.region_grounding import box_cell_coverage

    size = model.image_size
    prepared, geo = prepare(np.asarray(img, np.float32), laterality, size)
    pixels = (to_uint8(prepared).astype(np.float32) / 255.0)[None, ..., None]
    fn = spatial_fn or model.encode_spatial
    spatial = np.asarray(fn(params, pixels), np.float32)[0]                 # [h,w,D]
    h, w, _ = spatial.shape
    pb = np.asarray([geo.box_to_processed(b) for b in boxes], np.float32).reshape(-1, 4)
    cover = np.asarray(box_cell_coverage(pb, h, w, float(size)), np.float32).reshape(len(pb), -1)
    pooled = cover @ spatial.reshape(h * w, -1)
    norm = np.linalg.norm(pooled, axis=1, keepdims=True)
    return np.where(norm > 0, pooled / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def box_descriptors(model, params, img: np.ndarray, boxes: Sequence[Sequence[float]],
                    laterality: str | None, roi: bool = True, spatial_fn=None) -> np.ndarray:
    """f32[K, 5 (+ D with roi)]: `box_geometry` of each box, then its `roi_features`: what the
    head sees besides the crop features."""
    h, w = np.asarray(img).shape
    geo = np.stack([box_geometry(b, w, h, laterality) for b in boxes]).astype(np.float32)
    if not roi:
        return geo
    return np.concatenate([geo, roi_features(model, params, img, boxes, laterality, spatial_fn)], 1)


def box_crop(img: np.ndarray, box: Sequence[float], laterality: str | None, size: int, margin: float) -> np.ndarray:
    """The crop the towers see for a box given in original pixels: f32[size, size] in the
    canonical (right-wrist) frame, as retrieval.encode does for a drawn box."""
    from wristmir_jax.imaging.crops import crop_square
    from wristmir_jax.imaging.preprocess import canonical_flip

    h, w = img.shape
    b = [float(v) for v in box]
    if canonical_flip(laterality):
        img = img[:, ::-1]
        b = [w - b[2], b[1], w - b[0], b[3]]
    return crop_square(img, b, size, margin)


# --- features and head -------------------------------------------------------------------------
def make_featurizer(model):
    """jitted (params, crops f32[B,s,s,1]) -> f32[B, 3*D]: the crop through the tower as each bone."""
    import jax
    import jax.numpy as jnp

    def feats(params, crops):
        n = crops.shape[0]
        outs = [model.encode_crop(params, crops, jnp.full((n,), r, jnp.int32)) for r in range(len(REGIONS))]
        return jnp.concatenate(outs, axis=-1)

    return jax.jit(feats)


def _init_head(rng, d_in: int, hidden: int = 128) -> dict[str, np.ndarray]:
    g = np.random.default_rng(rng)
    return {"w1": (g.standard_normal((d_in, hidden)) / np.sqrt(d_in)).astype(np.float32),
            "b1": np.zeros(hidden, np.float32),
            "w2": (g.standard_normal((hidden, len(CLASSES))) / np.sqrt(hidden)).astype(np.float32),
            "b2": np.zeros(len(CLASSES), np.float32)}


def head_logits(head, feats):
    import jax

    x = jax.nn.gelu(feats @ head["w1"] + head["b1"])
    return x @ head["w2"] + head["b2"]


@dataclasses.dataclass
class BoxClassifier:
    head: dict[str, np.ndarray]
    meta: dict[str, Any]
    proj: dict[str, np.ndarray] | None = None   # fine-tuned local_image_proj params, if any

    def model_params(self, params: dict) -> dict:
        """The contrastive params with the fine-tuned projection swapped in (if any)."""
        if self.proj is None:
            return params
        out = dict(params)
        out["local_image_proj"] = {k: np.asarray(v) for k, v in self.proj.items()}
        return out

    def predict_features(self, feats: np.ndarray) -> np.ndarray:
        """f32[B, 3D] -> class probabilities f32[B, 4] (CLASSES order)."""
        import jax

        return np.asarray(jax.nn.softmax(head_logits(self.head, np.asarray(feats, np.float32)), -1))

    def save(self, out_dir: str) -> None:
        from safetensors.numpy import save_file

        os.makedirs(out_dir, exist_ok=True)
        tensors = {f"head.{k}": np.ascontiguousarray(v, np.float32) for k, v in self.head.items()}
        for k, v in (self.proj or {}).items():
            tensors[f"proj.{k}"] = np.ascontiguousarray(v, np.float32)
        save_file(tensors, os.path.join(out_dir, HEAD_FILE))
        with atomic_write(os.path.join(out_dir, META_FILE)) as f:
            json.dump(self.meta, f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, folder: str, params_sha256: str | None = None) -> "BoxClassifier":
        from safetensors.numpy import load_file

        meta_path = os.path.join(folder, META_FILE)
        if not os.path.exists(meta_path) or not os.path.exists(os.path.join(folder, HEAD_FILE)):
            raise UserError(f"not a box classifier folder (needs {HEAD_FILE} and {META_FILE}; "
                            "train one with `wristmir box-classifier`)", path=folder)
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            tensors = load_file(os.path.join(folder, HEAD_FILE))
        except (OSError, ValueError) as e:
            raise UserError(f"unreadable box classifier ({type(e).__name__})", path=folder) from None
        if tuple(meta.get("classes", ())) != CLASSES:
            raise UserError(f"box classifier classes {meta.get('classes')} are not {list(CLASSES)}", path=folder)
        if params_sha256 is not None and meta.get("params_sha256") != params_sha256:
            raise UserError("box classifier was trained on another model; retrain it with "
                            "`wristmir box-classifier`", path=folder)
        head = {k[5:]: v for k, v in tensors.items() if k.startswith("head.")}
        proj = {k[5:]: v for k, v in tensors.items() if k.startswith("proj.")} or None
        if set(head) != {"w1", "b1", "w2", "b2"}:
            raise UserError("box classifier head is incomplete", path=folder)
        return cls(head, meta, proj)


def train(model, params, crops: np.ndarray, geometry: np.ndarray, labels: np.ndarray, *, steps: int = 800,
          lr: float = 3e-3,
          batch: int = 128, finetune: bool = False, seed: int = 0, featurizer=None) -> BoxClassifier:
    """Trains the head (and with finetune the crop projection) on crops f32[N,s,s,1], their box
    geometry f32[N,5] and labels int[N] (class indices). Returns the classifier (meta without
    figures)."""
    import jax
    import jax.numpy as jnp
    import optax

    featurizer = featurizer or make_featurizer(model)
    labels = np.asarray(labels, np.int32)
    n = labels.shape[0]
    rng = np.random.default_rng(seed)
    tx = optax.adamw(lr, weight_decay=1e-4)
    if not finetune:
        feats = np.concatenate([np.asarray(featurizer(params, jnp.asarray(crops[s:s + 256])))
                                for s in range(0, n, 256)])
        feats = np.concatenate([feats, np.asarray(geometry, np.float32)], 1)
        head = jax.tree.map(jnp.asarray, _init_head(seed, feats.shape[1]))

        def loss_fn(h, x, y):
            return optax.softmax_cross_entropy_with_integer_labels(head_logits(h, x), y).mean()

        @jax.jit
        def step(h, opt, x, y):
            loss, g = jax.value_and_grad(loss_fn)(h, x, y)
            upd, opt = tx.update(g, opt, h)
            return optax.apply_updates(h, upd), opt, loss

        opt = tx.init(head)
        for _ in range(steps):
            idx = rng.integers(0, n, min(batch, n))
            head, opt, _ = step(head, opt, feats[idx], labels[idx])
        return BoxClassifier(jax.tree.map(np.asarray, head), {}, None)

    d_in = int(np.asarray(featurizer(params, jnp.asarray(crops[:1]))).shape[1]) + geometry.shape[1]
    trainable = {"head": jax.tree.map(jnp.asarray, _init_head(seed, d_in)),
                 "proj": jax.tree.map(jnp.asarray, params["local_image_proj"])}
    frozen = params

    def featurize(t, x, geo):
        p = dict(frozen)
        p["local_image_proj"] = t["proj"]
        outs = [model.encode_crop(p, x, jnp.full((x.shape[0],), r, jnp.int32)) for r in range(len(REGIONS))]
        return jnp.concatenate(outs + [geo], -1)

    def loss_fn(t, x, geo, y):
        return optax.softmax_cross_entropy_with_integer_labels(head_logits(t["head"], featurize(t, x, geo)), y).mean()

    @jax.jit
    def step(t, opt, x, geo, y):
        loss, g = jax.value_and_grad(loss_fn)(t, x, geo, y)
        upd, opt = tx.update(g, opt, t)
        return optax.apply_updates(t, upd), opt, loss

    opt = tx.init(trainable)
    for _ in range(steps):
        idx = rng.integers(0, n, min(batch, n))
        trainable, opt, _ = step(trainable, opt, jnp.asarray(crops[idx]), jnp.asarray(geometry[idx]),
                                 jnp.asarray(labels[idx]))
    return BoxClassifier(jax.tree.map(np.asarray, trainable["head"]), {},
                         jax.tree.map(np.asarray, trainable["proj"]))


def classify_crops(clf: BoxClassifier, model, params, crops: np.ndarray, geometry: np.ndarray,
                   featurizer=None) -> np.ndarray:
    """Class probabilities f32[N, 4] for crops f32[N,s,s,1] and their box descriptors
    (`box_descriptors`: geometry f32[N,5], and the ROI features when the classifier has them)."""
    import jax.numpy as jnp

    featurizer = featurizer or make_featurizer(model)
    p = clf.model_params(params)
    feats = np.concatenate([np.asarray(featurizer(p, jnp.asarray(crops[s:s + 256])))
                            for s in range(0, crops.shape[0], 256)])
    return clf.predict_features(np.concatenate([feats, np.asarray(geometry, np.float32)], 1))


def classify_box_file(model, params, params_sha256: str, path: str, box: Sequence[float],
                      laterality: str | None, folder: str) -> tuple[str, dict[str, float]]:
    """The class of a box drawn on an image file (original pixels): (class name, probabilities).
    A box outside the image or of zero area is a UserError naming the file."""
    from wristmir_jax.imaging.io import load_image
    from wristmir_jax.schema import SchemaError, validate_box

    clf = BoxClassifier.load(folder, params_sha256)
    img = load_image(path)
    h, w = img.shape
    try:
        validate_box(list(box), w, h, where="--box")
    except SchemaError as e:
        raise UserError(str(e), path=path) from None
    crop = box_crop(img, box, laterality, model.crop_size, float(clf.meta.get("margin", 0.2)))
    desc = box_descriptors(model, params, img, [box], laterality, roi=bool(clf.meta.get("roi", False)))
    probs = classify_crops(clf, model, params, crop[None, ..., None].astype(np.float32), desc)[0]
    return CLASSES[int(probs.argmax())], {c: round(float(p), 4) for c, p in zip(CLASSES, probs)}
