"""A frozen pretrained text tower: the trainer starts from the checkpoint's weights, keeps them
fixed, and the per-caption feature cache gives exactly what running the tower would."""

import numpy as np
import pytest

import jax

from wristmir_jax.data.tokenizer import load_pretrained, tokenize
from wristmir_jax.models.hf_import import load_text_tower, packaged_minilm_dir
from wristmir_jax.models.text_cache import TextFeatureCache, caption_arrays
from wristmir_jax.train.defaults import base_config
from wristmir_jax.train.setup import build_run, resolve_config
from wristmir_jax.tasks.wrist_contrastive import init_batch

CAPTIONS = ["right wrist. distal radius: buckle fracture.", "left wrist. no fracture.",
            "right wrist. distal radius: buckle fracture."]
REGION = [["distal radius: buckle fracture", "distal ulna: no fracture", "ulnar styloid: no fracture"],
          ["distal radius: no fracture", "distal ulna: no fracture", "ulnar styloid: avulsion fracture"],
          ["distal radius: buckle fracture", "distal ulna: no fracture", "ulnar styloid: no fracture"]]


def _cfg():
    c = base_config("tiny")
    c.data.source = "synthetic"
    c.model.text.pretrained = "minilm"
    c.model.text.frozen = True
    c.model.text.max_len = 16
    c.model.text.vocab_size = 30522
    c.train.steps = 4
    # One device and one validation batch: what is tested here does not depend on sharding
    # (tests/test_train_step.py covers that), and 8 simulated devices on 2 cores cost minutes.
    c.mesh.data = 1
    c.data.eval_batches = 1
    return resolve_config(c)


@pytest.fixture(scope="module")
def setup():
    run = build_run(_cfg())
    return run.cfg, run.model, run.state


def _batch(model, cfg):
    tok = load_pretrained("minilm")
    b = init_batch(cfg, batch_size=len(CAPTIONS))
    b["global_tokens"], b["global_mask"] = tokenize(tok, CAPTIONS, model.max_text_len)
    ids, mask = tokenize(tok, [t for row in REGION for t in row], model.max_text_len)
    b["region_tokens"] = ids.reshape(len(CAPTIONS), 3, -1)
    b["region_mask"] = mask.reshape(len(CAPTIONS), 3, -1)
    rng = np.random.default_rng(0)
    b["image"] = rng.random(b["image"].shape, np.float32)
    b["crops"] = rng.random(b["crops"].shape, np.float32)
    return b


def test_training_state_starts_from_the_checkpoint_and_freezes_the_text_tower(setup):
    cfg, model, state = setup
    ref, _ = load_text_tower(packaged_minilm_dir())
    got = state["params"]["text"]
    np.testing.assert_array_equal(np.asarray(got["word_embed"]),
                                  ref["word_embed"])
    assert r"^text/" in tuple(cfg.optim.freeze)
    from wristmir_jax.train.optim import trainable_mask

    mask = trainable_mask(cfg.optim, state["params"])
    assert not any(jax.tree.leaves(mask["text"]))
    assert all(jax.tree.leaves(mask["global_text_proj"]))


def test_cached_features_equal_running_the_tower(setup):
    cfg, model, state = setup
    params = state["params"]
    b = _batch(model, cfg)
    cache = TextFeatureCache(model, params, chunk=4)
    with_feat = cache.attach(b)
    # identical captions share an entry: 2 distinct global + (2 + 1 + 2) distinct region captions
    assert len(cache) == 2 + 5 and cache.computed == len(cache)
    # region captions of all three bones share chunks: 1 global chunk + ceil(5 / 4) region ones
    assert cache.chunks == 3
    live = model.encode(params, b)
    cached = model.encode(params, with_feat)
    for k in ("global_txt", "region_txt", "global_img", "region_img"):
        np.testing.assert_allclose(np.asarray(cached[k]), np.asarray(live[k]), atol=2e-5)
    cache.attach(b)
    assert cache.computed == 7  # nothing new to run the second time


def test_prefill_from_a_split_then_batches_only_look_up(setup):
    cfg, model, state = setup
    params = state["params"]
    b = _batch(model, cfg)
    examples = [{k: b[k][i] for k in b} for i in range(len(CAPTIONS))]  # a sequence source
    caps = caption_arrays(examples)
    assert caps["region_tokens"].shape == b["region_tokens"].shape
    assert caption_arrays(examples, 1, 1) == {} and TextFeatureCache(model, params).prefill({}) == 0
    cache = TextFeatureCache(model, params, chunk=4)
    assert cache.prefill(caps) == 7 and cache.chunks == 3
    assert cache.prefill(caption_arrays(examples, 0, 2)) == 0  # all seen
    with_feat = cache.attach(b)
    assert cache.computed == 7 and cache.chunks == 3  # the batch ran no tower call
    lazy = TextFeatureCache(model, params, chunk=4).attach(b)
    for k in ("global_text_feat", "region_text_feat"):
        np.testing.assert_allclose(with_feat[k], lazy[k], atol=1e-6)

    # prefill_split: only sources with stored records (built splits), within the size limit
    class Stored(list):
        def stored(self, i):
            return self[i]

    split_cache = TextFeatureCache(model, params, chunk=4)
    assert not split_cache.prefill_split(examples) and split_cache.computed == 0
    assert not split_cache.prefill_split(Stored(examples), 1, 1) and split_cache.computed == 0
    assert split_cache.prefill_split(Stored(examples), 0, 2) and split_cache.computed > 0
    assert split_cache.prefill_split(Stored(examples)) and split_cache.computed == 7


def test_frozen_text_training_keeps_text_weights_and_trains_the_projection(setup, tmp_path):
    from wristmir_jax.train.checkpoint import restore_for_inference
    from wristmir_jax.train.trainer import train

    cfg = _cfg()
    with cfg.unlocked():
        cfg.train.checkpoint_every = 4
        cfg.train.eval_every = 4
    summary = train(cfg, str(tmp_path / "w"))
    assert summary["status"] == "completed" and summary["text_feature_cache"]["captions"] > 0
    _, trained, _ = restore_for_inference(str(tmp_path / "w"))
    init = setup[2]["params"]
    for a, b in zip(jax.tree.leaves(trained["text"]), jax.tree.leaves(init["text"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    moved = np.abs(np.asarray(trained["global_text_proj"]["kernel"])
                   - np.asarray(init["global_text_proj"]["kernel"])).max()
    assert moved > 0
