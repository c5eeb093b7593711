"""The global and local two-tower model and its pure functional interface.

`build(cfg_model, vocab_size=None) -> WristModel`. A WristModel holds only static config; every
method is a pure function of (params, inputs), safe to jit:

  init(rng, batch) -> (params, logical_axes)
  init_params(rng, batch) -> params                 (jittable, e.g. with out_shardings)
  logical_axes(batch) -> logical_axes               (abstract; no FLOPs)
  encode(params, batch, *, train=False, rng=None) -> dict of embeddings and logit scales
  encode_image(params, image) -> f32[B,D]
  encode_crops(params, crops) -> f32[B,3,D]
  encode_crop(params, crop, region_index) -> f32[B,D]
  encode_global_text(params, tokens, mask) -> f32[B,D]
  encode_region_text(params, tokens, mask, region_index) -> f32[B,D]
  global_text_features / region_text_features(params, tokens, mask[, region_index]) -> f32[B,W]
                                                    (pooled text tower output, no projection)

With `text.frozen` the batch may carry `global_text_feat` f32[B,W] and `region_text_feat`
f32[B,3,W] (the frozen tower's pooled outputs, from models/text_cache.TextFeatureCache); encode
then projects those instead of running the text tower, which is what makes a pretrained
MiniLM text tower affordable on CPU (it runs once per distinct caption, not once per example).

With `word_features` encode also returns `spatial_img` f32[B,h,w,D] (every location of the global
image tower's last feature map through the global image projection), `word_txt` f32[B,L,D] (every
global caption token through the global text projection; with a frozen tower from the batch's
`global_token_feat` f32[B,L,W]) and the learned `word_attn_scale` / `word_scale`: the inputs of
the word-region term. `encode_spatial` / `encode_words` give the same for any model (grounding).
With `region_words` as well, encode returns `region_word_txt` f32[B,3,L,D]: each bone's region
caption token by token through the global text tower and projection (the words grounding
measures; the `region_grounding` term's input; with a frozen tower from the batch's
`region_token_feat` f32[B,3,L,W]). With `grounding_heads` the region words and the spatial map's
last-map part have projection heads of their own (`region_word_proj`, `spatial_proj`), so the
grounding term leaves the global projections to the global terms. `spatial_trunk_grad` scales
the gradient the spatial map sends back into the global image tower (0: the spatial terms
train only projections, over features the global terms shape).

Towers: global image (ViT or ResNet) <-> global caption; local image (one tower shared across the
three bones with a region embedding, or one per bone, vmapped) <-> region caption. The text
tower is shared by global and region captions unless `share_text_tower=False`. Four projection
heads map tower outputs to `embed_dim`; outputs are L2-normalised fp32.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.models.layers import Linear, logical
from wristmir_jax.models.params import split_boxed
from wristmir_jax.models.resnet import ResNet, ResNetSpec
from wristmir_jax.models.text import TextSpec, TextTower
from wristmir_jax.models.vit import ViT, ViTSpec
from wristmir_jax.schema import NUM_REGIONS

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Word -> location attention sharpness of a model without a learned one (GLoRIA's gamma_1), used
# for grounding maps of models trained without the word-region term; also the learned one's init.
WORD_ATTN_SCALE = 4.0


@dataclasses.dataclass(frozen=True)
class NetSpec:
    embed_dim: int
    global_image: Any
    local_image: Any
    local_shared: bool
    region_embedding: bool
    text: TextSpec
    share_text_tower: bool
    init_log_scale: float
    init_bias: float
    max_scale: float
    word_features: bool = False
    region_words: bool = False
    grounding_heads: bool = False
    spatial_trunk_grad: float = 1.0


def _scale_grad(x, scale: float):
    """x unchanged going forward; its gradient multiplied by `scale` going back."""
    return scale * x + (1.0 - scale) * jax.lax.stop_gradient(x)


def _tower_cls(spec):
    return ViT if isinstance(spec, ViTSpec) else ResNet


def _l2_normalize(x):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


class WristNet(nn.Module):
    """Flax module behind WristModel; use WristModel's pure methods rather than this directly."""

    spec: NetSpec

    def setup(self):
        s = self.spec
        self.global_image = _tower_cls(s.global_image)(s.global_image)
        local_cls = _tower_cls(s.local_image)
        if s.local_shared:
            self.local_image = local_cls(s.local_image)
        else:
            per_bone = nn.vmap(local_cls, variable_axes={"params": 0},
                               split_rngs={"params": True, "dropout": True}, in_axes=1, out_axes=1,
                               metadata_params={nn.PARTITION_NAME: "region"})
            self.local_image = per_bone(s.local_image)
        self.text = TextTower(s.text)
        if not s.share_text_tower:
            self.local_text = TextTower(s.text)
        proj = dict(features=(s.embed_dim,), in_names=("embed",), out_names=("proj",),
                    dtype=s.text.dtype)
        self.global_image_proj = Linear(**proj)
        self.local_image_proj = Linear(**proj)
        self.global_text_proj = Linear(**proj)
        if getattr(s.global_image, "spatial_stage", -1) >= 0:
            # The finer map's own projection, added to the upsampled last map's (see _spatial).
            self.global_spatial_proj = Linear(**proj)
        self.local_text_proj = Linear(**proj)
        if s.grounding_heads:
            self.region_word_proj = Linear(**proj)
            self.spatial_proj = Linear(**proj)
        scale_init = logical(nn.initializers.constant(s.init_log_scale), ())
        bias_init = logical(nn.initializers.constant(s.init_bias), ())
        self.global_log_scale = self.param("global_log_scale", scale_init, (), jnp.float32)
        self.global_bias = self.param("global_bias", bias_init, (), jnp.float32)
        self.local_log_scale = self.param("local_log_scale", scale_init, (), jnp.float32)
        self.local_bias = self.param("local_bias", bias_init, (), jnp.float32)
        if s.word_features:
            # The word-region term's learned attention sharpness and logit scale (losses/
            # word_region.py; GLoRIA's gamma_1 = 4 and gamma_3 = 10 as starting values).
            self.word_attn_log_scale = self.param(
                "word_attn_log_scale", logical(nn.initializers.constant(math.log(WORD_ATTN_SCALE)), ()),
                (), jnp.float32)
            self.word_log_scale = self.param(
                "word_log_scale", logical(nn.initializers.constant(math.log(10.0)), ()), (), jnp.float32)

    def _region_text_tower(self):
        return self.text if self.spec.share_text_tower else self.local_text

    def embed_image(self, image):
        pooled, _ = self.global_image(image)
        return _l2_normalize(self.global_image_proj(pooled))

    def _spatial(self, fmap):
        """Projected (not yet normalised) spatial embeddings f32[B,h,w,D] of the global tower:
        its last feature map (ViT: patch tokens) through the global image projection; with
        image.spatial_stage (ResNet) on that stage's finer grid, the last map's projection
        (nearest-upsampled: what is there) plus the finer map's own (where exactly)."""
        last_proj = self.spatial_proj if self.spec.grounding_heads else self.global_image_proj
        if self.spec.spatial_trunk_grad != 1.0:
            fmap = jax.tree.map(lambda x: _scale_grad(x, self.spec.spatial_trunk_grad), fmap)
        if isinstance(self.spec.global_image, ViTSpec):
            g = self.spec.global_image.grid
            return last_proj(fmap[:, 1:].reshape(fmap.shape[0], g, g, fmap.shape[-1]))
        if isinstance(fmap, tuple):
            last, fine = fmap
            f = fine.shape[1] // last.shape[1]
            up = jnp.repeat(jnp.repeat(last_proj(last), f, axis=1), f, axis=2)
            return up + self.global_spatial_proj(fine)
        return last_proj(fmap)

    def embed_image_spatial(self, image):
        """(global embedding f32[B,D], spatial embedding f32[B,h,w,D]): every location of the
        last feature map through the global image projection, L2-normalised, from one tower run."""
        pooled, fmap = self.global_image(image)
        spatial = _l2_normalize(self._spatial(fmap))
        return _l2_normalize(self.global_image_proj(pooled)), spatial

    def spatial_embed(self, image):
        return self.embed_image_spatial(image)[1]

    def embed_words(self, tokens, mask):
        """f32[B,L,D]: every token's hidden state through the global text projection (the words
        the word-region term aligns; padding rows are meaningless, use the mask)."""
        _, h = self.text(tokens, mask)
        return _l2_normalize(self.global_text_proj(h))

    def _region_word_proj(self):
        return self.region_word_proj if self.spec.grounding_heads else self.global_text_proj

    def embed_region_words(self, tokens, mask):
        """f32[B,L,D]: every token of region captions through the global text tower and the
        region words' projection (the `region_grounding` term's words; grounding heatmaps)."""
        _, h = self.text(tokens, mask)
        return _l2_normalize(self._region_word_proj()(h))

    def global_text_states(self, tokens, mask):
        """(pooled f32[B,W], hidden states f32[B,L,W]) of the global text tower, no projection."""
        pooled, h = self.text(tokens, mask)
        return pooled.astype(jnp.float32), h.astype(jnp.float32)

    def word_scales(self):
        """(attention scale, logit scale) of the word-region term."""
        clip = lambda v: jnp.minimum(v, self.spec.max_scale) if self.spec.max_scale > 0 else v
        return clip(jnp.exp(self.word_attn_log_scale)), clip(jnp.exp(self.word_log_scale))

    def embed_crops(self, crops):
        b, r = crops.shape[:2]
        if r != NUM_REGIONS:
            raise ValueError(f"crops must be [B,{NUM_REGIONS},h,w,C], got {tuple(crops.shape)}")
        if self.spec.local_shared:
            ids = jnp.tile(jnp.arange(r, dtype=jnp.int32), b) if self.spec.region_embedding else None
            pooled, _ = self.local_image(crops.reshape((b * r,) + crops.shape[2:]), ids)
            pooled = pooled.reshape(b, r, -1)
        else:
            pooled, _ = self.local_image(crops)
        return _l2_normalize(self.local_image_proj(pooled))

    def embed_crop(self, crop, region_index):
        region_index = region_index.astype(jnp.int32)
        if self.spec.local_shared:
            ids = region_index if self.spec.region_embedding else None
            pooled, _ = self.local_image(crop, ids)
        else:
            # One tower per bone: run all three and keep the requested bone's output.
            tiled = jnp.broadcast_to(crop[:, None], (crop.shape[0], NUM_REGIONS) + crop.shape[1:])
            pooled, _ = self.local_image(tiled)
            pooled = jnp.take_along_axis(pooled, region_index[:, None, None], axis=1)[:, 0]
        return _l2_normalize(self.local_image_proj(pooled))

    def embed_global_text(self, tokens, mask):
        pooled, _ = self.text(tokens, mask)
        return _l2_normalize(self.global_text_proj(pooled))

    def global_text_features(self, tokens, mask):
        """The global text tower's pooled output (before the projection head)."""
        return self.text(tokens, mask)[0].astype(jnp.float32)

    def region_text_features(self, tokens, mask, region_index):
        ids = region_index.astype(jnp.int32) if self.spec.region_embedding else None
        return self._region_text_tower()(tokens, mask, ids)[0].astype(jnp.float32)

    def embed_region_text(self, tokens, mask, region_index):
        ids = region_index.astype(jnp.int32) if self.spec.region_embedding else None
        pooled, _ = self._region_text_tower()(tokens, mask, ids)
        return _l2_normalize(self.local_text_proj(pooled))

    def logit_params(self):
        def scale(log_scale):
            s = jnp.exp(log_scale)
            return jnp.minimum(s, self.spec.max_scale) if self.spec.max_scale > 0 else s
        return {"global_scale": scale(self.global_log_scale), "global_bias": self.global_bias,
                "local_scale": scale(self.local_log_scale), "local_bias": self.local_bias}

    def __call__(self, batch):
        b = batch["image"].shape[0]
        words = region_words = None
        if "global_text_feat" in batch:
            # A frozen text tower's pooled features, computed once per caption (TextFeatureCache):
            # only the projection heads see the gradient.
            dt = self.spec.text.dtype
            global_txt = _l2_normalize(self.global_text_proj(batch["global_text_feat"].astype(dt)))
            region_txt = _l2_normalize(self.local_text_proj(batch["region_text_feat"].astype(dt)))
            if self.spec.word_features:
                if "global_token_feat" not in batch:
                    raise KeyError("model.word_features with a frozen text tower needs "
                                   "batch['global_token_feat'] (TextFeatureCache with tokens)")
                words = _l2_normalize(self.global_text_proj(batch["global_token_feat"].astype(dt)))
            if self.spec.region_words:
                if "region_token_feat" not in batch:
                    raise KeyError("model.region_words with a frozen text tower needs "
                                   "batch['region_token_feat'] (TextFeatureCache with region tokens)")
                region_words = _l2_normalize(
                    self._region_word_proj()(batch["region_token_feat"].astype(dt)))
        else:
            rt = batch["region_tokens"]
            length = rt.shape[-1]
            region_ids = jnp.tile(jnp.arange(NUM_REGIONS, dtype=jnp.int32), b)
            region_txt = self.embed_region_text(
                rt.reshape(b * NUM_REGIONS, length),
                batch["region_mask"].reshape(b * NUM_REGIONS, length),
                region_ids).reshape(b, NUM_REGIONS, -1)
            pooled, h = self.text(batch["global_tokens"], batch["global_mask"])
            global_txt = _l2_normalize(self.global_text_proj(pooled))
            if self.spec.word_features:
                words = _l2_normalize(self.global_text_proj(h))
            if self.spec.region_words:
                region_words = self.embed_region_words(
                    rt.reshape(b * NUM_REGIONS, length),
                    batch["region_mask"].reshape(b * NUM_REGIONS, length)).reshape(b, NUM_REGIONS, length, -1)
        if self.spec.word_features:
            global_img, spatial = self.embed_image_spatial(batch["image"])
        else:
            global_img, spatial = self.embed_image(batch["image"]), None
        out = {"global_img": global_img,
               "global_txt": global_txt,
               "region_img": self.embed_crops(batch["crops"]),
               "region_txt": region_txt}
        out.update(self.logit_params())
        if self.spec.word_features:
            out["spatial_img"], out["word_txt"] = spatial, words
            out["word_attn_scale"], out["word_scale"] = self.word_scales()
        if self.spec.region_words:
            out["region_word_txt"] = region_words
        return out


# ----------------------------------------------------------------------------- config -> specs

def _image_spec(c, size: int, common: dict, num_regions: int):
    if c.name == "vit":
        return ViTSpec(image_size=int(size), patch=int(c.patch), width=int(c.width),
                       depth=int(c.depth), heads=int(c.heads),
                       mlp_dim=int(round(c.width * c.mlp_ratio)), channels=1, pool=c.pool,
                       layer_norm_eps=float(c.layer_norm_eps), pixel_mean=float(c.pixel_mean),
                       pixel_std=float(c.pixel_std), num_regions=num_regions, **common)
    if c.name == "resnet":
        if len(c.resnet_stages) != len(c.resnet_widths):
            raise ValueError("resnet_stages and resnet_widths must have the same length")
        return ResNetSpec(stages=tuple(int(x) for x in c.resnet_stages),
                          widths=tuple(int(x) for x in c.resnet_widths),
                          stem_stride=int(c.resnet_stem_stride), groups=int(c.resnet_groups),
                          channels=1, pixel_mean=float(c.pixel_mean), pixel_std=float(c.pixel_std),
                          pool=str(c.pool), input_norm=str(c.get("input_norm", "fixed")),
                          num_regions=num_regions, film=bool(c.get("region_film", False)),
                          spatial_stage=int(c.get("spatial_stage", -1)),
                          dtype=common["dtype"], remat=common["remat"],
                          deterministic=common["deterministic"])
    raise ValueError(f"unknown image tower {c.name!r} (vit|resnet)")


def net_spec(cfg: ml_collections.ConfigDict, deterministic: bool = True) -> NetSpec:
    if cfg.dtype not in _DTYPES:
        raise ValueError(f"model dtype must be one of {sorted(_DTYPES)}, got {cfg.dtype!r}")
    if cfg.get("region_words", False) and not cfg.get("word_features", False):
        raise ValueError("model.region_words needs model.word_features=True (the spatial map and "
                         "the learned word attention scale)")
    if cfg.get("grounding_heads", False) and not cfg.get("region_words", False):
        raise ValueError("model.grounding_heads needs model.region_words=True (they are the region "
                         "words' and the spatial map's heads)")
    trunk_grad = float(cfg.get("spatial_trunk_grad", 1.0))
    if not 0.0 <= trunk_grad <= 1.0:
        raise ValueError(f"model.spatial_trunk_grad must be in [0, 1], got {trunk_grad}")
    common = dict(dtype=_DTYPES[cfg.dtype], remat=bool(cfg.remat), scan=bool(cfg.scan_layers),
                  dropout=float(cfg.dropout), deterministic=deterministic)
    shared = bool(cfg.local.shared_across_regions)
    region_emb = bool(cfg.local.region_embedding)
    t = cfg.text
    text = TextSpec(vocab_size=int(t.vocab_size), width=int(t.width), depth=int(t.depth),
                    heads=int(t.heads), mlp_dim=int(t.mlp_dim), max_len=int(t.max_len),
                    type_vocab_size=int(t.type_vocab_size), pool=t.pool,
                    layer_norm_eps=float(t.layer_norm_eps),
                    num_regions=NUM_REGIONS if region_emb else 0, **common)
    return NetSpec(
        embed_dim=int(cfg.embed_dim),
        global_image=_image_spec(cfg.image, cfg.image.image_size, common, 0),
        local_image=_image_spec(cfg.local, cfg.local.crop_size, common,
                                NUM_REGIONS if (shared and region_emb) else 0),
        local_shared=shared, region_embedding=region_emb, text=text,
        share_text_tower=bool(cfg.share_text_tower),
        init_log_scale=float(math.log(1.0 / cfg.init_temperature)), init_bias=float(cfg.init_bias),
        max_scale=float(cfg.max_scale), word_features=bool(cfg.get("word_features", False)),
        region_words=bool(cfg.get("region_words", False)),
        grounding_heads=bool(cfg.get("grounding_heads", False)), spatial_trunk_grad=trunk_grad)


# ----------------------------------------------------------------------------- public model

class WristModel:
    """Static config plus pure functions of (params, inputs). See the module docstring."""

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.cfg = cfg
        self.spec = net_spec(cfg, deterministic=True)
        self._net = WristNet(self.spec)
        self._net_train = WristNet(net_spec(cfg, deterministic=False))
        self._init_jit = jax.jit(self.init_params)  # one compiled init per model object

    # -- shapes
    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    @property
    def image_size(self) -> int:
        return int(self.cfg.image.image_size)

    @property
    def crop_size(self) -> int:
        return int(self.cfg.local.crop_size)

    @property
    def max_text_len(self) -> int:
        return int(self.cfg.text.max_len)

    def dummy_batch(self, batch_size: int = 1, text_len: int | None = None) -> dict:
        """Zero inputs with the shapes `init`/`encode` expect (numpy)."""
        length = text_len or self.max_text_len
        h, c = self.image_size, self.crop_size
        return {"image": np.zeros((batch_size, h, h, 1), np.float32),
                "crops": np.zeros((batch_size, NUM_REGIONS, c, c, 1), np.float32),
                "crop_mask": np.ones((batch_size, NUM_REGIONS), np.float32),
                "global_tokens": np.zeros((batch_size, length), np.int32),
                "global_mask": np.ones((batch_size, length), np.int32),
                "region_tokens": np.zeros((batch_size, NUM_REGIONS, length), np.int32),
                "region_mask": np.ones((batch_size, NUM_REGIONS, length), np.int32)}

    @staticmethod
    def _model_inputs(batch: dict) -> dict:
        keys = ("image", "crops", "global_tokens", "global_mask", "region_tokens", "region_mask")
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"batch is missing {missing}")
        out = {k: batch[k] for k in keys}
        if "global_text_feat" in batch:  # cached frozen-tower features (models/text_cache.py)
            out["global_text_feat"] = batch["global_text_feat"]
            out["region_text_feat"] = batch["region_text_feat"]
            for k in ("global_token_feat", "region_token_feat"):
                if k in batch:
                    out[k] = batch[k]
        return out

    # -- init
    def _boxed_init(self, rng, batch):
        return self._net.init({"params": rng}, self._model_inputs(batch))["params"]

    def init_params(self, rng, batch) -> dict:
        """fp32 params pytree (pure; jit it, e.g. with out_shardings from `logical_axes`)."""
        return split_boxed(self._boxed_init(rng, batch))[0]

    def logical_axes(self, batch) -> dict:
        """Logical axis names per parameter (a tuple per leaf, () for scalars); no compute."""
        abstract = jax.eval_shape(self._boxed_init, jax.random.key(0), self._model_inputs(batch))
        return split_boxed(abstract)[1]

    def init(self, rng, batch) -> tuple[dict, dict]:
        params = self._init_jit(rng, self._model_inputs(batch))
        return params, self.logical_axes(batch)

    # -- apply
    def _apply(self, params, *args, method, train=False, rng=None):
        net = self._net_train if train else self._net
        rngs = None
        if train and self.spec.text.dropout > 0.0:
            if rng is None:
                raise ValueError("encode(train=True) with dropout > 0 needs rng")
            rngs = {"dropout": rng}
        return net.apply({"params": params}, *args, method=method, rngs=rngs)

    def encode(self, params, batch, *, train: bool = False, rng=None) -> dict:
        """Embeddings (L2-normalised fp32) and logit scales/biases (fp32 scalars) for a batch."""
        return self._apply(params, self._model_inputs(batch), method=WristNet.__call__,
                           train=train, rng=rng)

    def encode_image(self, params, image):
        return self._apply(params, image, method=WristNet.embed_image)

    def encode_crops(self, params, crops):
        return self._apply(params, crops, method=WristNet.embed_crops)

    def encode_crop(self, params, crop, region_index):
        """One crop per example (e.g. a user-drawn box) with its bone's index in REGIONS."""
        return self._apply(params, crop, jnp.asarray(region_index), method=WristNet.embed_crop)

    def encode_global_text(self, params, tokens, mask):
        return self._apply(params, tokens, mask, method=WristNet.embed_global_text)

    def encode_region_text(self, params, tokens, mask, region_index):
        return self._apply(params, tokens, mask, jnp.asarray(region_index),
                           method=WristNet.embed_region_text)

    def global_text_features(self, params, tokens, mask):
        """f32[B,W]: the text tower's pooled output for global captions (no projection)."""
        return self._apply(params, tokens, mask, method=WristNet.global_text_features)

    def region_text_features(self, params, tokens, mask, region_index):
        """f32[B,W]: the (region) text tower's pooled output for region captions."""
        return self._apply(params, tokens, mask, jnp.asarray(region_index),
                           method=WristNet.region_text_features)

    def encode_spatial(self, params, image):
        """f32[B,h,w,D]: the global image tower's last feature map, each location through the
        global image projection, L2-normalised (the word-region term's and grounding's input)."""
        return self._apply(params, image, method=WristNet.spatial_embed)

    def encode_words(self, params, tokens, mask):
        """f32[B,L,D]: each caption token through the (global) text tower and projection."""
        return self._apply(params, tokens, mask, method=WristNet.embed_words)

    def encode_region_words(self, params, tokens, mask):
        """f32[B,L,D]: each region caption token through the text tower and the region words'
        projection (the global text projection unless model.grounding_heads)."""
        return self._apply(params, tokens, mask, method=WristNet.embed_region_words)

    def global_text_states(self, params, tokens, mask):
        """(pooled f32[B,W], token hidden states f32[B,L,W]) of the global text tower."""
        return self._apply(params, tokens, mask, method=WristNet.global_text_states)

    def word_attn_scale(self, params):
        """The word -> location attention scale: learned with model.word_features, else the
        fixed WORD_ATTN_SCALE."""
        if self.word_features:
            return self._apply(params, method=WristNet.word_scales)[0]
        return jnp.float32(WORD_ATTN_SCALE)

    @property
    def word_features(self) -> bool:
        """True when cfg.word_features: encode also returns spatial_img, word_txt and the word
        scales (the word-region term's inputs); a frozen text tower's cache then keeps each
        distinct global caption's token hidden states too."""
        return self.spec.word_features

    @property
    def region_words(self) -> bool:
        """True when cfg.region_words: encode also returns region_word_txt; a frozen text tower's
        cache then keeps each distinct region caption's token hidden states too."""
        return self.spec.region_words

    @property
    def text_frozen(self) -> bool:
        """True when cfg.text.frozen: the text tower is not trained and the trainer and `embed`
        feed its pooled features from a per-caption cache (models/text_cache.py)."""
        return bool(self.cfg.text.get("frozen", False))

    def logit_params(self, params) -> dict:
        return self._apply(params, method=WristNet.logit_params)


def build(cfg_model: ml_collections.ConfigDict, vocab_size: int | None = None) -> WristModel:
    """A WristModel for the `model` config block. `vocab_size` (from the tokenizer) overrides
    cfg.text.vocab_size; towers with `pretrained` set take their architecture from the
    checkpoint's config.json (see hf_import.resolve_pretrained)."""
    from wristmir_jax.models.hf_import import resolve_pretrained

    cfg = copy.deepcopy(cfg_model)
    with cfg.unlocked():
        if vocab_size is not None:
            cfg.text.vocab_size = int(vocab_size)
        cfg = resolve_pretrained(cfg)
        if cfg.text.get("pretrained") and vocab_size is not None and vocab_size > cfg.text.vocab_size:
            raise UserError(f"tokenizer vocabulary {vocab_size} exceeds the checkpoint's "
                            f"{cfg.text.vocab_size}", path=cfg.text.pretrained)
    cfg.lock()
    return WristModel(cfg)
