"""Import of local Hugging Face checkpoints (config.json + model.safetensors, never pickle) into the
towers: BERT-family text models (BERT, BiomedBERT, CXR-BERT-style, MiniLM) into the text tower and
ViT image models (transformers ViTModel / ViTFor* layouts) into the image towers; the tokenizer
from the same folder via transformers.AutoTokenizer (local files only).

  load_text_tower(folder) -> (params_subtree, tower_cfg)   TextTower layout, per-layer blocks
  load_vit(folder) -> (params_subtree, tower_cfg)          ViT layout, per-layer blocks, 1 channel
  resolve_pretrained(cfg_model) -> cfg_model               architecture fields from config.json
  apply_pretrained(params, cfg_model_or_model) -> params   checkpoint weights placed into params
  load_tokenizer(folder)

A ViT checkpoint's RGB patch kernel is folded for grayscale input: the three input channels
(the grey image replicated, each normalised with the checkpoint's image_mean/std) collapse into
one channel, exactly; the tower's own pixel normalisation is then the identity (mean 0, std 1).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.models.params import stack_layers
from wristmir_jax.utils.pretrained import MINILM, packaged_minilm_dir, resolve_folder  # noqa: F401

_SUPPORTED_ACT = ("gelu",)  # exact erf GELU; "gelu_new"/tanh variants would not match


# ----------------------------------------------------------------------------- files

def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError("missing file (expected a Hugging Face model folder)", path=path) from None
    except json.JSONDecodeError as e:
        raise UserError(f"invalid JSON: {e.msg}", path=path, line=e.lineno) from None


def read_config(folder: str) -> dict:
    folder = resolve_folder(folder)
    if not os.path.isdir(folder):
        raise UserError("pretrained folder not found", path=folder)
    return _read_json(os.path.join(folder, "config.json"))


def load_tensors(folder: str) -> dict[str, np.ndarray]:
    """All tensors of a (possibly sharded) safetensors checkpoint as fp32 numpy arrays."""
    from safetensors.numpy import load_file

    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(single):
        files = [single]
    elif os.path.exists(index):
        files = sorted({os.path.join(folder, f)
                        for f in _read_json(index).get("weight_map", {}).values()})
    else:
        raise UserError("no model.safetensors (pickle checkpoints such as pytorch_model.bin "
                        "are not loaded; convert with save_pretrained(safe_serialization=True))",
                        path=folder)
    out: dict[str, np.ndarray] = {}
    for f in files:
        try:
            tensors = load_file(f)
        except Exception as e:  # corrupt or bf16 file numpy cannot hold: say which file
            raise UserError(f"cannot read safetensors: {type(e).__name__}: {e}", path=f) from None
        for k, v in tensors.items():
            out[k] = np.asarray(v, dtype=np.float32) if v.dtype.kind == "f" else v
    return out


def _strip_prefix(tensors: dict, anchor: str, folder: str) -> dict:
    """Keys relative to the backbone: drops e.g. 'bert.' / 'vit.' / 'model.' prefixes."""
    hits = [k for k in tensors if k.endswith(anchor)]
    if not hits:
        raise UserError(f"checkpoint has no {anchor!r}: not a supported architecture", path=folder)
    prefix = min(hits, key=len)[: -len(anchor)]
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _take(t: dict, folder: str, *names: str) -> np.ndarray:
    for n in names:
        if n in t:
            return t[n]
    raise UserError(f"checkpoint is missing {names[0]!r}", path=folder)


def _ln(t: dict, folder: str, base: str) -> dict:
    return {"scale": _take(t, folder, f"{base}.weight", f"{base}.gamma"),
            "bias": _take(t, folder, f"{base}.bias", f"{base}.beta")}


def _dense(t, folder, names_w, names_b) -> tuple[np.ndarray, np.ndarray]:
    return _take(t, folder, *names_w), _take(t, folder, *names_b)


def _attention(t, folder, heads: int, q, k, v, o) -> dict:
    """HF (out, in) Linear weights -> kernels [embed, heads, kv] and [heads, kv, embed]."""
    out = {}
    for name, base in (("query", q), ("key", k), ("value", v)):
        w, b = _dense(t, folder, [f"{x}.weight" for x in base], [f"{x}.bias" for x in base])
        width = w.shape[1]
        out[name] = {"kernel": w.T.reshape(width, heads, -1), "bias": b.reshape(heads, -1)}
    w, b = _dense(t, folder, [f"{x}.weight" for x in o], [f"{x}.bias" for x in o])
    out["out"] = {"kernel": w.T.reshape(heads, -1, w.shape[0]), "bias": b}
    return out


def _mlp(t, folder, fc1, fc2) -> dict:
    w1, b1 = _dense(t, folder, [f"{x}.weight" for x in fc1], [f"{x}.bias" for x in fc1])
    w2, b2 = _dense(t, folder, [f"{x}.weight" for x in fc2], [f"{x}.bias" for x in fc2])
    return {"fc1": {"kernel": w1.T, "bias": b1}, "fc2": {"kernel": w2.T, "bias": b2}}


def _check_act(hf: dict, folder: str) -> None:
    act = hf.get("hidden_act", "gelu")
    if act not in _SUPPORTED_ACT:
        raise UserError(f"hidden_act {act!r} is not supported (only exact 'gelu')", path=folder)


# ----------------------------------------------------------------------------- text (BERT family)

def text_tower_config(folder: str) -> dict:
    """Text-tower fields from a BERT-family config.json."""
    hf = read_config(folder)
    _check_act(hf, folder)
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise UserError("only absolute position embeddings are supported", path=folder)
    try:
        return dict(vocab_size=int(hf["vocab_size"]), width=int(hf["hidden_size"]),
                    depth=int(hf["num_hidden_layers"]), heads=int(hf["num_attention_heads"]),
                    mlp_dim=int(hf["intermediate_size"]),
                    type_vocab_size=int(hf.get("type_vocab_size", 2)),
                    layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
                    max_position_embeddings=int(hf.get("max_position_embeddings", 512)))
    except KeyError as e:
        raise UserError(f"config.json has no {e.args[0]!r}: not a BERT-family model",
                        path=os.path.join(folder, "config.json")) from None


def load_text_tower(folder: str) -> tuple[dict, ml_collections.ConfigDict]:
    """(TextTower params with per-layer `encoder/layers_i`, tower config) from a BERT folder.

    The params hold the full position table (max_position_embeddings rows); apply_pretrained
    keeps the first max_len rows."""
    tc = text_tower_config(folder)
    t = _strip_prefix(load_tensors(folder), "embeddings.word_embeddings.weight", folder)
    heads = tc["heads"]
    p: dict[str, Any] = {
        "word_embed": _take(t, folder, "embeddings.word_embeddings.weight"),
        "pos_embed": _take(t, folder, "embeddings.position_embeddings.weight"),
        "type_embed": _take(t, folder, "embeddings.token_type_embeddings.weight"),
        "ln_embed": _ln(t, folder, "embeddings.LayerNorm"),
        "encoder": {},
    }
    for i in range(tc["depth"]):
        L = f"encoder.layer.{i}"
        p["encoder"][f"layers_{i}"] = {
            "attn": _attention(t, folder, heads, [f"{L}.attention.self.query"],
                               [f"{L}.attention.self.key"], [f"{L}.attention.self.value"],
                               [f"{L}.attention.output.dense"]),
            "ln_attn": _ln(t, folder, f"{L}.attention.output.LayerNorm"),
            "mlp": _mlp(t, folder, [f"{L}.intermediate.dense"], [f"{L}.output.dense"]),
            "ln_mlp": _ln(t, folder, f"{L}.output.LayerNorm"),
        }
    return p, ml_collections.ConfigDict(tc)


# ----------------------------------------------------------------------------- ViT

def _image_norm(folder: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std the checkpoint was trained with (ViTImageProcessor default 0.5)."""
    path = os.path.join(folder, "preprocessor_config.json")
    mean, std = [0.5] * channels, [0.5] * channels
    if os.path.exists(path):
        pc = _read_json(path)
        if not pc.get("do_normalize", True):
            mean, std = [0.0] * channels, [1.0] * channels
        else:
            mean = pc.get("image_mean", mean)
            std = pc.get("image_std", std)
    mean = np.broadcast_to(np.asarray(mean, np.float32), (channels,))
    std = np.broadcast_to(np.asarray(std, np.float32), (channels,))
    return mean, std


def vit_tower_config(folder: str) -> dict:
    hf = read_config(folder)
    _check_act(hf, folder)
    if not hf.get("qkv_bias", True):
        raise UserError("ViT checkpoints without qkv bias are not supported", path=folder)
    try:
        width = int(hf["hidden_size"])
        return dict(image_size=int(hf.get("image_size", 224)), patch=int(hf["patch_size"]),
                    width=width, depth=int(hf["num_hidden_layers"]),
                    heads=int(hf["num_attention_heads"]),
                    mlp_ratio=float(hf["intermediate_size"]) / width,
                    layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
                    num_channels=int(hf.get("num_channels", 3)))
    except KeyError as e:
        raise UserError(f"config.json has no {e.args[0]!r}: not a ViT model",
                        path=os.path.join(folder, "config.json")) from None


def load_vit(folder: str) -> tuple[dict, ml_collections.ConfigDict]:
    """(ViT params for 1-channel [0,1] input with identity pixel normalisation, tower config).

    Position embeddings are for the checkpoint's image_size; apply_pretrained resizes them."""
    vc = vit_tower_config(folder)
    t = _strip_prefix(load_tensors(folder), "embeddings.patch_embeddings.projection.weight", folder)
    heads, c = vc["heads"], vc["num_channels"]
    w = _take(t, folder, "embeddings.patch_embeddings.projection.weight")  # [W, C, p, p]
    b = _take(t, folder, "embeddings.patch_embeddings.projection.bias")
    mean, std = _image_norm(folder, c)
    # Grey x replicated to C channels, channel ch normalised as (x - mean[ch]) / std[ch]:
    # sum_ch W_ch (x - m_ch) / s_ch = (sum_ch W_ch / s_ch) x - sum_ch m_ch / s_ch * W_ch.
    w_scaled = w / std[None, :, None, None]
    kernel = w_scaled.sum(axis=1).transpose(1, 2, 0)  # [p, p, W]
    bias = b - np.einsum("wcij,c->w", w_scaled, mean)
    p: dict[str, Any] = {
        "patch_embed": {"kernel": kernel.reshape(-1, w.shape[0]), "bias": bias},
        "cls": _take(t, folder, "embeddings.cls_token").reshape(-1),
        "pos_embed": _take(t, folder, "embeddings.position_embeddings")[0],
        "ln_final": _ln(t, folder, "layernorm"),
        "encoder": {},
    }
    for i in range(vc["depth"]):
        old, new = f"encoder.layer.{i}", f"layers.{i}"  # saved (legacy) and in-memory v5 names
        p["encoder"][f"layers_{i}"] = {
            "attn": _attention(t, folder, heads,
                               [f"{old}.attention.attention.query", f"{new}.attention.q_proj"],
                               [f"{old}.attention.attention.key", f"{new}.attention.k_proj"],
                               [f"{old}.attention.attention.value", f"{new}.attention.v_proj"],
                               [f"{old}.attention.output.dense", f"{new}.attention.o_proj"]),
            "ln_attn": _ln(t, folder, f"{old}.layernorm_before") if f"{old}.layernorm_before.weight"
            in t else _ln(t, folder, f"{new}.layernorm_before"),
            "mlp": _mlp(t, folder, [f"{old}.intermediate.dense", f"{new}.mlp.fc1"],
                        [f"{old}.output.dense", f"{new}.mlp.fc2"]),
            "ln_mlp": _ln(t, folder, f"{old}.layernorm_after") if f"{old}.layernorm_after.weight"
            in t else _ln(t, folder, f"{new}.layernorm_after"),
        }
    return p, ml_collections.ConfigDict(vc)


def resize_pos_embed(pos: np.ndarray, new_grid: int) -> np.ndarray:
    """[1+g*g, W] position table (CLS first) -> [1+n*n, W] by bicubic resize of the grid part."""
    old_grid = int(round((pos.shape[0] - 1) ** 0.5))
    if old_grid == new_grid:
        return pos
    grid = pos[1:].reshape(old_grid, old_grid, -1)
    grid = jax.image.resize(jnp.asarray(grid), (new_grid, new_grid, grid.shape[-1]), "bicubic")
    return np.concatenate([pos[:1], np.asarray(grid).reshape(new_grid * new_grid, -1)], axis=0)


# ----------------------------------------------------------------------------- config + params

def resolve_pretrained(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Copy of the model config whose pretrained towers take their architecture from config.json.

    Text: vocab/width/depth/heads/mlp_dim/type vocab/eps from the checkpoint, max_len capped at
    max_position_embeddings. ViT towers: patch/width/depth/heads/mlp_ratio/eps from the checkpoint, the configured
    image/crop size kept (position embeddings are resized), pixel normalisation folded in."""
    cfg = copy.deepcopy(cfg)
    with cfg.unlocked():
        if cfg.text.get("pretrained"):
            cfg.text.pretrained = resolve_folder(cfg.text.pretrained)
            tc = text_tower_config(cfg.text.pretrained)
            for k in ("vocab_size", "width", "depth", "heads", "mlp_dim", "type_vocab_size",
                      "layer_norm_eps"):
                cfg.text[k] = tc[k]
            cfg.text.max_len = min(int(cfg.text.max_len), tc["max_position_embeddings"])
        for key, size_key in (("image", "image_size"), ("local", "crop_size")):
            tower = cfg[key]
            if not tower.get("pretrained"):
                continue
            if tower.name != "vit":
                raise UserError(f"model.{key}.pretrained needs name='vit' (got {tower.name!r})",
                                path=tower.pretrained)
            vc = vit_tower_config(tower.pretrained)
            for k in ("patch", "width", "depth", "heads", "mlp_ratio", "layer_norm_eps"):
                tower[k] = vc[k]
            tower.pixel_mean, tower.pixel_std = 0.0, 1.0
            if int(tower[size_key]) % vc["patch"]:
                raise UserError(f"model.{key}.{size_key}={tower[size_key]} is not a multiple of "
                                f"the checkpoint's patch {vc['patch']}", path=tower.pretrained)
    return cfg


def _place(target: Any, source: Any, where: str, optional: tuple[str, ...]) -> Any:
    """target's tree with source's leaves (shape-checked); target-only keys in `optional` kept."""
    if isinstance(target, dict):
        if not isinstance(source, dict):
            raise UserError(f"pretrained layout mismatch at {where}")
        out = {}
        for k, v in target.items():
            if k in source:
                out[k] = _place(v, source[k], f"{where}/{k}", optional)
            elif k in optional:
                out[k] = v
            else:
                raise UserError(f"pretrained checkpoint has no weights for {where}/{k}")
        return out
    src = np.asarray(source, np.float32)
    if tuple(src.shape) != tuple(np.shape(target)):
        raise UserError(f"pretrained shape mismatch at {where}: checkpoint {tuple(src.shape)}, "
                        f"model {tuple(np.shape(target))}")
    return jnp.asarray(src)


def apply_pretrained(params: dict, cfg_or_model: Any) -> dict:
    """Params with the configured pretrained towers' weights replacing their initial values.

    Accepts the model config block or a WristModel (whose config is already resolved). Weights
    the checkpoint lacks (region embeddings, a MAP head, projections, logit scales) keep their
    initial values."""
    cfg = getattr(cfg_or_model, "cfg", cfg_or_model)
    cfg = resolve_pretrained(cfg)
    params = dict(params)
    scan = bool(cfg.scan_layers)

    def prepare(sub: dict) -> dict:
        return stack_layers(sub) if scan else sub

    if cfg.text.get("pretrained"):
        sub, _ = load_text_tower(cfg.text.pretrained)
        sub["pos_embed"] = sub["pos_embed"][: int(cfg.text.max_len)]
        sub = prepare(sub)
        params["text"] = _place(params["text"], sub, "text", ("region_embed",))
        if not cfg.share_text_tower:
            params["local_text"] = _place(params["local_text"], sub, "local_text",
                                          ("region_embed",))
    for key, name, size_key in (("image", "global_image", "image_size"),
                                ("local", "local_image", "crop_size")):
        tower = cfg[key]
        if not tower.get("pretrained"):
            continue
        sub, _ = load_vit(tower.pretrained)
        sub["pos_embed"] = resize_pos_embed(sub["pos_embed"], int(tower[size_key]) // int(tower.patch))
        sub = prepare(sub)
        if key == "local" and not tower.shared_across_regions:
            sub = jax.tree.map(lambda a: np.broadcast_to(a, (3,) + a.shape), sub)
        params[name] = _place(params[name], sub, name, ("region_embed", "map_head"))
    return params


def load_tokenizer(folder: str):
    """The checkpoint's tokenizer (transformers AutoTokenizer, local files only)."""
    from transformers import AutoTokenizer

    folder = resolve_folder(folder)
    if not os.path.isdir(folder):
        raise UserError("tokenizer folder not found", path=folder)
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load tokenizer: {e}".splitlines()[0], path=folder) from None
