"""The jitted train step: sharded (8 simulated devices) == one device, GradCache accumulation ==
the full batch, non-finite batches skipped and counted, optimizer masks and freezing."""

import jax
import jax.numpy as jnp
import numpy as np

from wristmir_jax.config import load_config
from wristmir_jax.data.synthetic import synthetic_batches
from wristmir_jax.train import optim
from wristmir_jax.train.inputs import to_global
from wristmir_jax.train.mesh import make_mesh
from wristmir_jax.train.setup import build_run
from wristmir_jax.train.step import gradcache_value_and_grad


# One block per tower keeps compile times short; the step logic does not depend on depth.
SHALLOW = ["--config.model.image.depth=1", "--config.model.local.depth=1",
           "--config.model.text.depth=1"]


def _cfg(*overrides):
    return load_config("configs/tiny.py", SHALLOW + list(overrides))


def _batch(cfg, b=16, seed=3):
    m = cfg.model
    return next(synthetic_batches(b, m.image.image_size, m.local.crop_size, m.text.max_len,
                                  m.text.vocab_size, seed=seed))


def _setup(cfg, mesh, grad_accum=1):
    cfg.train.grad_accum = grad_accum
    return build_run(cfg, mesh)


def _run(cfg, mesh, batches, grad_accum=1):
    run = _setup(cfg, mesh, grad_accum)
    gb = [to_global(b, mesh) for b in batches]
    step = run.compile(gb[0])
    state, metrics = run.state, []
    for b in gb:
        state, m = step(state, b)
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6, scale_atol=False):
    """Leafwise closeness; with scale_atol the absolute tolerance is rtol x the tree's largest
    magnitude (gradients: fp32 summation order moves every entry by ~1e-7 of the largest, and
    some leaves, like attention key biases, have an exactly-zero true gradient)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    big = max(float(np.abs(np.asarray(y)).max()) for y in lb)
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        tol = max(atol, rtol * big) if scale_atol else atol
        np.testing.assert_allclose(x, y, rtol=rtol, atol=tol)


def test_sharded_step_equals_one_device():
    """Mesh 4x2 (data x fsdp, and data x tensor) == one device, to 1e-5. Adam's eps is raised
    in this test only: the attention key biases have an exactly-zero gradient (softmax ignores
    a constant added to every key's logit), so their gradients are pure rounding noise that
    Adam with eps=1e-8 would blow up to +-lr whatever the reduction order."""
    assert len(jax.devices()) == 8
    cfg = _cfg("--config.optim.eps=1e-3", "--config.optim.warmup_steps=0")
    batches = [_batch(cfg, seed=s) for s in (1, 2)]
    one = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    s1, m1 = _run(cfg, one, batches)
    init = jax.device_get(_setup(cfg, one).state["params"])
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(init))]
    assert max(moved) > 1e-4  # the updates really happened
    for axes in (dict(data=4, fsdp=2, tensor=1), dict(data=4, fsdp=1, tensor=2)):
        s8, m8 = _run(cfg, make_mesh(axes), batches)
        _assert_trees_close(s1["params"], s8["params"])
        _assert_trees_close(s1["opt_state"], s8["opt_state"])
        for a, b in zip(m1, m8):
            np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
            np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)


def test_fsdp_shards_parameters():
    cfg = _cfg()
    mesh = make_mesh(dict(data=4, fsdp=2, tensor=1))
    shardings = _setup(cfg, mesh).shardings
    specs = [s.spec for s in jax.tree.leaves(shardings["params"])]
    assert any("fsdp" in str(s) for s in specs)
    # Adam moments follow their parameters' shardings.
    mu_specs = [s.spec for s in jax.tree.leaves(shardings["opt_state"])]
    assert sum("fsdp" in str(s) for s in mu_specs) >= 2 * sum("fsdp" in str(s) for s in specs)


def test_grad_accumulation_is_exact():
    """GradCache with k micro-batches == the full-batch loss and gradient (what grad_accum=1
    computes), including the in-batch negatives across micro-batches (a naive per-micro-batch
    loss would differ). The step's grad_accum>1 path itself runs in the non-finite test and in
    tests/test_train_pod.py."""
    cfg = _cfg("--config.loss.terms.global_clip=1.0", "--config.loss.terms.local_clip=0.5")
    mesh = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    run = _setup(cfg, mesh)
    model, objective, state = run.model, run.objective, run.state
    from wristmir_jax.train.step import device_batch

    batch = {k: jnp.asarray(v) for k, v in device_batch(_batch(cfg)).items()}
    params = state["params"]
    rng = jax.random.PRNGKey(0)
    enc = lambda p, b, r: model.encode(p, b, train=True, rng=r)

    def full(p):
        return objective(enc(p, batch, rng), batch)[0]

    loss1, g1 = jax.jit(jax.value_and_grad(full))(params)
    lossk, _, _, gk = jax.jit(lambda p: gradcache_value_and_grad(enc, objective, p, batch, rng, 4))(params)
    np.testing.assert_allclose(lossk, loss1, rtol=1e-6)
    _assert_trees_close(gk, g1, rtol=1e-5, atol=1e-9, scale_atol=True)

    # the naive alternative (mean of per-micro-batch losses) is measurably different
    def naive(p):
        tot = 0.0
        for j in range(4):
            mb = {k: v[j::4] for k, v in batch.items()}
            tot = tot + objective(enc(p, mb, rng), mb)[0] / 4
        return tot

    assert abs(float(jax.jit(naive)(params)) - float(loss1)) > 1e-3


def test_nonfinite_batch_is_skipped_and_counted():
    # no warmup: a skipped step does not advance the schedule, so the next lr is the peak
    cfg = _cfg("--config.optim.warmup_steps=0")
    mesh = make_mesh(dict(data=2, fsdp=1, tensor=1), devices=jax.devices()[:2])
    run = _setup(cfg, mesh, grad_accum=2)  # the GradCache path
    state, shardings, fn = run.state, run.shardings, run.step_fn
    good = _batch(cfg)
    bad = {**good, "image": np.where(np.arange(16)[:, None, None, None] == 5, np.nan, good["image"])}
    step = jax.jit(fn)
    before = jax.device_get(state)
    s1, m1 = step(state, to_global(bad, mesh))
    s1 = jax.device_get(s1)
    assert int(m1["finite"]) == 0 and int(m1["nonfinite_total"]) == 1
    assert int(s1["step"]) == 1 and int(s1["nonfinite_run"]) == 1
    _assert_trees_close(s1["params"], before["params"], rtol=0, atol=0)
    _assert_trees_close(s1["opt_state"], before["opt_state"], rtol=0, atol=0)
    s2, m2 = step(jax.device_put(s1, shardings), to_global(good, mesh))
    s2 = jax.device_get(s2)
    assert int(m2["finite"]) == 1 and int(s2["nonfinite_run"]) == 0
    assert float(m2["lr"]) == float(m1["lr"]) > 0
    assert int(s2["nonfinite_total"]) == 1 and int(s2["step"]) == 2
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree.leaves(s2["params"]), jax.tree.leaves(before["params"]))]
    assert max(moved) > 1e-4


def test_optimizer_masks_freeze_and_multipliers():
    cfg = _cfg("--config.optim.freeze=('^text/',)", "--config.optim.lr_multipliers=(('^local', 0.1),)")
    params = {"text": {"layer": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))}},
              "local": {"kernel": jnp.ones((3, 4))}, "image": {"kernel": jnp.ones((3, 4)),
                                                           "norm": {"scale": jnp.ones((4,))}}}
    labels = optim.group_labels(params, cfg.optim.freeze, cfg.optim.lr_multipliers)
    assert labels["text"]["layer"]["kernel"] == "frozen" and labels["local"]["kernel"] == "lr_x0.1"
    assert labels["image"]["kernel"] == "lr_x1"
    mask = optim.decay_mask(params, cfg.optim.no_decay)
    assert mask["image"]["kernel"] and not mask["image"]["norm"]["scale"]
    assert not mask["text"]["layer"]["bias"]
    cfg.optim.clip_norm = 0.0
    cfg.optim.weight_decay = 0.0
    cfg.optim.warmup_steps = 0
    tx, sched = optim.make_optimizer(cfg.optim, params, total_steps=10)
    grads = jax.tree.map(jnp.ones_like, params)
    upd, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(upd["text"]["layer"]["kernel"]).max()) == 0.0
    # Adam's first step is -lr * sign(g): the multiplier scales it exactly
    lr0 = float(sched(0))
    np.testing.assert_allclose(upd["image"]["kernel"], -lr0, rtol=1e-4)
    np.testing.assert_allclose(upd["local"]["kernel"], -0.1 * lr0, rtol=1e-4)


def test_ema_params_follow_the_documented_average_and_skip_frozen_leaves():
    """optim.ema_decay: state["ema_params"] == a numpy running average of the params after each
    step (decay min(d, (1 + t) / (10 + t))), frozen leaves equal the params, and the params
    themselves train exactly as without the average."""
    # eps raised as in the sharding test: the two programs below may round zero-gradient leaves
    # differently, which Adam with eps=1e-8 would blow up.
    base = ("--config.optim.freeze=('^text/',)", "--config.optim.warmup_steps=0",
            "--config.optim.eps=1e-3")
    cfg = _cfg(*base, "--config.optim.ema_decay=0.6")
    one = make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    batches = [to_global(_batch(cfg, seed=s), one) for s in (1, 2, 3)]
    run = _setup(cfg, one)
    state, shardings, fn = run.state, run.shardings, run.step_fn
    assert set(shardings) == set(state) and "ema_params" in state
    step = jax.jit(fn, donate_argnums=(0,))
    ema = [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(state["params"]))]
    for t, b in enumerate(batches):
        state, _ = step(state, b)
        d = min(0.6, (1 + t) / (10 + t))
        params = [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(state["params"]))]
        ema = [d * e + (1 - d) * p for e, p in zip(ema, params)]
    got = jax.device_get(state["ema_params"])
    for e, g in zip(ema, jax.tree.leaves(got)):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    flat_p = jax.tree_util.tree_flatten_with_path(jax.device_get(state["params"]))[0]
    flat_e = jax.tree.leaves(got)
    frozen = [i for i, (path, _) in enumerate(flat_p) if jax.tree_util.keystr(path).startswith("['text']")]
    moved = [i for i, (_, p) in enumerate(flat_p) if not np.array_equal(p, flat_e[i])]
    assert frozen and not set(frozen) & set(moved) and moved  # the average differs where it trains
    plain_cfg = _cfg(*base)
    plain_run = _setup(plain_cfg, one)
    plain, plain_fn = plain_run.state, plain_run.step_fn
    assert "ema_params" not in plain
    plain_step = jax.jit(plain_fn, donate_argnums=(0,))
    for b in batches:
        plain, _ = plain_step(plain, b)
    _assert_trees_close(jax.device_get(state["params"]), jax.device_get(plain["params"]))
