"""Ring variants of CLIP, SigLIP and multi-positive InfoNCE for large global batches.

The batch is sharded over the mesh's data axis (or several axes, taken together in row-major
order). Inside `jax.shard_map` each device keeps its own images and the running row statistics,
while blocks of texts travel around a ring with `jax.lax.ppermute`, carrying their own column
statistics (and, in the backward pass, their gradient accumulators) with them. After n steps
every image block has met every text block and the travelling state is back home. Each visiting
block of b = B / n texts is scored in column chunks of c <= `chunk` (default 256), so a device
holds [G, b, c] logits at a time: its memory grows linearly with the global batch, and no array
with two global-batch dimensions ever lives on one device.

Multipos needs the report relevance of the pairs it scores. With a `relevance_fn` (the objective
hands the trainer's `reports.relevance.relevance` to the ring terms) the records travel around
the ring with the texts and each device computes relevance(record, record) only for its own
[b, c] chunk, inside the loop; the dense f32[4, B, B] array is never built. Without one, the
rows of a dense batch["relevance"] are sliced inside the loop instead.

The gradient is a `jax.custom_vjp` whose backward pass is a second ring pass that recomputes
each block from the saved per-query log-sum-exps, so gradient memory is bounded the same way
(autodiff through the forward loop would store every block). Values and gradients equal the
plain terms in contrastive.py, including the masking of identical captions, missing crops and
(multipos) relevant pairs.

Registered as {global,local}_{clip,siglip,multipos}_ring with parameters `mesh` (a
jax.sharding.Mesh; default: the mesh set with jax.set_mesh), `axis` (a mesh axis name or a
tuple of names, default "data"; the global batch must be divisible by their product), `chunk`
and, for multipos, `threshold` and `relevance_fn`. Mesh axes not named in `axis` see
replicated inputs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from wristmir_jax.losses.common import NEG, caption_ids, param
from wristmir_jax.losses.registry import register

KINDS = ("clip", "multipos", "siglip")


def _ring_setup(mesh, axes):
    n = math.prod(mesh.shape[a] for a in axes)
    name = axes if len(axes) > 1 else axes[0]
    perm = [(i, (i + 1) % n) for i in range(n)]
    return n, name, perm


def chunk_size(b: int, chunk: int) -> int:
    """Columns of a visiting block scored at once: b itself when b <= chunk, else the largest
    divisor of b that is <= chunk (so a device's live logits are [G, b, c], linear in b)."""
    if b <= chunk:
        return b
    return max(d for d in range(1, chunk + 1) if b % d == 0)


class _Rel:
    """Where the relevance of one [G, b, c] block comes from: the device's rows of a dense
    relevance array (mode "dense": rows [R, b, B]), or the records of the resident rows and of the
    visiting chunk through `fn(rec_a, rec_b) -> [R, A, B]` (mode "records"), or nowhere (None)."""

    def __init__(self, mode, fn, offset, g):
        self.mode, self.fn, self.offset, self.g = mode, fn, offset, g

    def block(self, resident, rec_c, src, col0, b, c):
        if self.mode == "dense":
            # Sliced straight from the device's [R, b, B] rows inside the ring (slicing outside
            # would copy [G, b, B] per device).
            return jax.lax.dynamic_slice(resident, (self.offset, 0, src * b + col0),
                                         (self.g, b, c))
        if self.mode == "records":
            return self.fn(resident, rec_c)[self.offset:self.offset + self.g]
        return None


def _block_masks(kind, valid, cid, valid_c, cid_c, diag, rel_blk, threshold):
    """Masks of one [G, b, c] block: (allowed in the denominators / pairs summed, positive
    label). valid, cid: [b, G] of the resident queries; *_c [c, G] of the visiting chunk;
    diag bool[1, b, c]: the true pairs."""
    both = valid.T[:, :, None] & valid_c.T[:, None, :]
    same = (cid.T[:, :, None] == cid_c.T[:, None, :]) & ~diag
    if kind == "siglip":
        return both, diag | same
    allowed = both & ~same
    if kind == "multipos":
        allowed = allowed & ~((rel_blk >= threshold) & ~diag)
    return allowed, diag


def _chunk(x, col0, c):
    return jax.lax.dynamic_slice_in_dim(x, col0, c, axis=0)


def _diag(is_home, b, c, col0):
    return (is_home & (jnp.arange(b)[:, None] == col0 + jnp.arange(c)[None, :]))[None]


def _fwd_local(kind, ring, threshold, chunk, relsrc, img, txt, scale, bias, valid, cid, rel):
    """Per-device forward. img, txt [b,G,D]; valid bool[b,G]; cid i32[b,G]; rel: the device's
    dense relevance rows [R,b,B], its records [b,F] (they travel with the texts), or a dummy."""
    n, name, perm = ring
    b, g, _ = img.shape
    c = chunk_size(b, chunk)
    me = jax.lax.axis_index(name)
    travels = relsrc.mode == "records"

    def step(t, carry):
        acc, txt_t, valid_t, cid_t, rec_t, col = carry
        src = (me - t) % n

        def one_chunk(j, inner):
            acc, col = inner
            col0 = j * c
            txt_c, valid_c, cid_c = (_chunk(x, col0, c) for x in (txt_t, valid_t, cid_t))
            rel_blk = relsrc.block(rel, _chunk(rec_t, col0, c) if travels else None, src, col0,
                                   b, c)
            allowed, pos = _block_masks(kind, valid, cid, valid_c, cid_c,
                                        _diag(src == me, b, c, col0), rel_blk, threshold)
            sims = jnp.einsum("ngd,mgd->gnm", img, txt_c)
            if kind == "siglip":
                z = jnp.where(pos, 1.0, -1.0)
                ll = jax.nn.log_sigmoid(z * (scale * sims + bias))
                return acc + jnp.sum(jnp.where(allowed, ll, 0.0)), col
            logits = jnp.where(allowed, scale * sims, NEG)
            acc = _lse_update(acc, logits, axis=2)
            col_c = tuple(jax.lax.dynamic_slice_in_dim(x, col0, c, axis=1) for x in col)
            col_c = _lse_update(col_c, logits, axis=1)
            col = tuple(jax.lax.dynamic_update_slice_in_dim(x, y, col0, axis=1)
                        for x, y in zip(col, col_c))
            return acc, col

        acc, col = jax.lax.fori_loop(0, b // c, one_chunk, (acc, col))
        txt_t, valid_t, cid_t, rec_t, col = jax.lax.ppermute(
            (txt_t, valid_t, cid_t, rec_t, col), name, perm)
        return acc, txt_t, valid_t, cid_t, rec_t, col

    stats0 = (jnp.full((g, b), NEG, jnp.float32), jnp.zeros((g, b), jnp.float32))
    acc0 = jnp.zeros((), jnp.float32) if kind == "siglip" else stats0
    rec0 = rel if travels else jnp.zeros((b, 0), jnp.int32)
    acc, _, _, _, _, col = jax.lax.fori_loop(0, n, step, (acc0, txt, valid, cid, rec0, stats0))
    count = jax.lax.psum(jnp.sum(valid.astype(jnp.float32)), name)
    count = jnp.maximum(count, 1.0)
    if kind == "siglip":
        return (-jax.lax.psum(acc, name) / count,), (count,)
    lse_r = acc[0] + jnp.log(acc[1])
    lse_c = col[0] + jnp.log(col[1])
    pos = scale * jnp.einsum("ngd,ngd->gn", img, txt)
    vt = valid.T
    i2t = jax.lax.psum(jnp.sum(jnp.where(vt, lse_r - pos, 0.0)), name) / count
    t2i = jax.lax.psum(jnp.sum(jnp.where(vt, lse_c - pos, 0.0)), name) / count
    return (i2t, t2i), (count, lse_r, lse_c)


def _lse_update(stats, logits, axis):
    m, s = stats
    new_m = jnp.maximum(m, jnp.max(logits, axis=axis))
    s = s * jnp.exp(m - new_m) + jnp.sum(jnp.exp(logits - jnp.expand_dims(new_m, axis)), axis=axis)
    return new_m, s


def _bwd_local(kind, ring, threshold, chunk, relsrc, img, txt, scale, bias, valid, cid, rel,
               stats, cts):
    """Per-device backward: a second ring pass; returns d_img, d_txt (local) and d_scale, d_bias
    (summed over the ring, so identical on every device)."""
    n, name, perm = ring
    b, g, _ = img.shape
    c = chunk_size(b, chunk)
    me = jax.lax.axis_index(name)
    travels = relsrc.mode == "records"
    count = stats[0]
    if kind == "siglip":
        ct = cts[0] / count
        lse_r = lse_c = jnp.zeros((g, b), jnp.float32)   # unused, keeps one loop body
        ct_r = ct_c = None
    else:
        _, lse_r, lse_c = stats
        ct_r, ct_c = cts[0] / count, cts[1] / count

    def step(t, carry):
        d_img, d_scale, d_bias, txt_t, valid_t, cid_t, rec_t, lse_t, d_txt_t = carry
        src = (me - t) % n

        def one_chunk(j, inner):
            d_img, d_scale, d_bias, d_txt_t = inner
            col0 = j * c
            txt_c, valid_c, cid_c = (_chunk(x, col0, c) for x in (txt_t, valid_t, cid_t))
            rel_blk = relsrc.block(rel, _chunk(rec_t, col0, c) if travels else None, src, col0,
                                   b, c)
            allowed, pos = _block_masks(kind, valid, cid, valid_c, cid_c,
                                        _diag(src == me, b, c, col0), rel_blk, threshold)
            sims = jnp.einsum("ngd,mgd->gnm", img, txt_c)
            if kind == "siglip":
                z = jnp.where(pos, 1.0, -1.0)
                d_logits = jnp.where(allowed,
                                     -ct * z * jax.nn.sigmoid(-z * (scale * sims + bias)), 0.0)
                d_bias = d_bias + jnp.sum(d_logits)
            else:
                logits = scale * sims
                lse_cc = jax.lax.dynamic_slice_in_dim(lse_t, col0, c, axis=1)
                p_row = jnp.where(allowed, jnp.exp(logits - lse_r[:, :, None]), 0.0)
                p_col = jnp.where(allowed, jnp.exp(logits - lse_cc[:, None, :]), 0.0)
                d_logits = ct_r * p_row + ct_c * p_col
            d_img = d_img + scale * jnp.einsum("gnm,mgd->ngd", d_logits, txt_c)
            d_txt_c = _chunk(d_txt_t, col0, c) + scale * jnp.einsum("gnm,ngd->mgd", d_logits, img)
            d_txt_t = jax.lax.dynamic_update_slice_in_dim(d_txt_t, d_txt_c, col0, axis=0)
            d_scale = d_scale + jnp.sum(d_logits * sims)
            return d_img, d_scale, d_bias, d_txt_t

        d_img, d_scale, d_bias, d_txt_t = jax.lax.fori_loop(
            0, b // c, one_chunk, (d_img, d_scale, d_bias, d_txt_t))
        txt_t, valid_t, cid_t, rec_t, lse_t, d_txt_t = jax.lax.ppermute(
            (txt_t, valid_t, cid_t, rec_t, lse_t, d_txt_t), name, perm)
        return d_img, d_scale, d_bias, txt_t, valid_t, cid_t, rec_t, lse_t, d_txt_t

    zero = jnp.zeros((), jnp.float32)
    rec0 = rel if travels else jnp.zeros((b, 0), jnp.int32)
    carry = (jnp.zeros_like(img), zero, zero, txt, valid, cid, rec0, lse_c, jnp.zeros_like(txt))
    d_img, d_scale, d_bias, *_, d_txt = jax.lax.fori_loop(0, n, step, carry)
    if kind != "siglip":
        # The positive (diagonal) logit of each valid query appears in both directions.
        d_pos = jnp.where(valid, -(ct_r + ct_c), 0.0)                       # [b,G]
        d_img = d_img + scale * d_pos[:, :, None] * txt
        d_txt = d_txt + scale * d_pos[:, :, None] * img
        d_scale = d_scale + jnp.sum(d_pos * jnp.einsum("ngd,ngd->ng", img, txt))
    return d_img, d_txt, jax.lax.psum(d_scale, name), jax.lax.psum(d_bias, name)


def _ring_loss(kind, mesh, axes, threshold, offset, groups, mode, relevance_fn, chunk):
    """A custom_vjp function (img, txt, scale, bias, valid, cid, rel) -> tuple of loss parts on
    global arrays (B-first, B sharded over `axes`). `rel` is the dense relevance f32[R,B,B]
    (mode "dense"), the records i32[B,F] (mode "records") or a dummy scalar (mode None)."""
    ring = _ring_setup(mesh, axes)
    relsrc = _Rel(mode, relevance_fn, offset, groups)
    bspec = P(axes)
    rel_spec = {"dense": P(None, axes, None), "records": P(axes, None)}.get(mode)
    n_out = 1 if kind == "siglip" else 2
    stat_specs = (P(),) if kind == "siglip" else (P(), P(None, axes), P(None, axes))

    def smap(body, in_specs, out_specs):
        return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                             check_vma=False)

    has_rel = mode is not None
    in_specs = (bspec, bspec, P(), P(), bspec, bspec) + ((rel_spec,) if has_rel else ())

    def fwd_body(img, txt, scale, bias, valid, cid, *rel):
        return _fwd_local(kind, ring, threshold, chunk, relsrc, img, txt, scale, bias, valid,
                          cid, rel[0] if has_rel else None)

    def bwd_body(img, txt, scale, bias, valid, cid, *rest):
        rel = rest[0] if has_rel else None
        stats, cts = rest[int(has_rel)], rest[int(has_rel) + 1]
        return _bwd_local(kind, ring, threshold, chunk, relsrc, img, txt, scale, bias, valid,
                          cid, rel, stats, cts)

    fwd_sm = smap(fwd_body, in_specs, ((P(),) * n_out, stat_specs))
    bwd_sm = smap(bwd_body, in_specs + (stat_specs, (P(),) * n_out),
                  (bspec, bspec, P(), P()))

    @jax.custom_vjp
    def loss(img, txt, scale, bias, valid, cid, rel):
        return fwd_sm(img, txt, scale, bias, valid, cid, *((rel,) if has_rel else ()))[0]

    def loss_fwd(img, txt, scale, bias, valid, cid, rel):
        extra = (rel,) if has_rel else ()
        out, stats = fwd_sm(img, txt, scale, bias, valid, cid, *extra)
        return out, (img, txt, scale, bias, valid, cid, rel, stats)

    def loss_bwd(res, cts):
        img, txt, scale, bias, valid, cid, rel, stats = res
        extra = (rel,) if has_rel else ()
        cts = tuple(jnp.asarray(c, jnp.float32) for c in cts)
        d_img, d_txt, d_scale, d_bias = bwd_sm(img, txt, scale, bias, valid, cid, *extra,
                                               stats, cts)
        return (d_img, d_txt, d_scale.astype(jnp.result_type(scale)),
                d_bias.astype(jnp.result_type(bias)), None, None, None)

    loss.defvjp(loss_fwd, loss_bwd)
    return loss


def _resolve_mesh(cfg):
    mesh = param(cfg, "mesh", None)
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh is None or mesh.empty:
            raise ValueError("ring loss needs a mesh: set params[term]['mesh'], pass "
                             "objective(cfg, mesh=...), or run under jax.set_mesh(mesh)")
    axis = param(cfg, "axis", "data")
    axes = (axis,) if isinstance(axis, str) else tuple(axis)
    missing = [a for a in axes if a not in mesh.shape]
    if missing:
        raise ValueError(f"ring loss: mesh has no axis {missing[0]!r} (axes: {tuple(mesh.shape)})")
    return mesh, axes


DEFAULT_CHUNK = 256


def ring_pairs(kind, img, txt, scale, bias, valid, caption_id, relevance=None, *, mesh,
               axis="data", threshold=0.75, relevance_offset=0, records=None,
               relevance_fn=None, chunk=DEFAULT_CHUNK):
    """The ring loss on B-first arrays: img, txt f32[B,G,D]; valid bool[B,G]; caption_id
    i32[B,G]. Multipos reads the relevance of group g from row relevance_offset + g of either
    `records` i32[B,F] with `relevance_fn(rec_a, rec_b) -> f32[R,A,B]` (computed block by block
    inside the ring: the records travel with the texts), or a dense `relevance` f32[R,B,B]
    (rows sharded like the batch). `chunk` bounds the columns scored at once (chunk_size).
    Returns (loss, aux) like the plain term."""
    if kind not in KINDS:
        raise ValueError(f"ring loss kind {kind!r} not in {KINDS}")
    axes = (axis,) if isinstance(axis, str) else tuple(axis)
    n = math.prod(mesh.shape[a] for a in axes)
    if img.shape[0] % n:
        raise ValueError(f"ring loss: batch {img.shape[0]} not divisible by ring size {n}")
    if int(chunk) < 1:
        raise ValueError(f"ring loss: chunk must be >= 1, got {chunk}")
    mode, rel = None, jnp.zeros((), jnp.float32)
    if kind == "multipos":
        if records is not None and relevance_fn is not None:
            mode, rel = "records", jnp.asarray(records).astype(jnp.int32)
        elif relevance is not None:
            mode, rel = "dense", relevance
        else:
            raise ValueError("loss term 'multipos' needs batch['record'] with a relevance_fn, "
                             "or batch['relevance'] (f32[4,B,B])")
    fn = _ring_loss(kind, mesh, axes, float(threshold), int(relevance_offset), img.shape[1],
                    mode, relevance_fn, int(chunk))
    # The ring accumulates in float32 whatever the embedding dtype (bf16 towers included).
    out = fn(img.astype(jnp.float32), txt.astype(jnp.float32), jnp.asarray(scale, jnp.float32),
             jnp.asarray(bias, jnp.float32),
             valid.astype(bool), caption_id.astype(jnp.int32), rel)
    if kind == "siglip":
        return out[0], {}
    i2t, t2i = out
    return 0.5 * (i2t + t2i), {"i2t": i2t, "t2i": t2i}


def _global_args(emb, batch):
    img, txt = emb["global_img"], emb["global_txt"]
    n = img.shape[0]
    rel = batch.get("relevance")
    return (img[:, None, :], txt[:, None, :], emb["global_scale"], emb["global_bias"],
            jnp.ones((n, 1), bool), caption_ids(batch, "global_caption_id", (n,))[:, None],
            rel), 3


def _local_args(emb, batch):
    img, txt = emb["region_img"], emb["region_txt"]
    n, g = img.shape[:2]
    mask = batch.get("crop_mask")
    valid = jnp.ones((n, g), bool) if mask is None else jnp.asarray(mask) > 0.5
    rel = batch.get("relevance")
    return (img, txt, emb["local_scale"], emb["local_bias"], valid,
            caption_ids(batch, "region_caption_id", (n, g)), rel), 0


def _ring_term(kind, view):
    args_of = _global_args if view == "global" else _local_args

    def fn(emb, batch, cfg=None):
        mesh, axes = _resolve_mesh(cfg)
        args, offset = args_of(emb, batch)
        rel_fn = param(cfg, "relevance_fn", None)
        records = batch.get("record") if rel_fn is not None else None
        return ring_pairs(kind, *args, mesh=mesh, axis=axes, relevance_offset=offset,
                          threshold=param(cfg, "threshold", 0.75), records=records,
                          relevance_fn=rel_fn, chunk=param(cfg, "chunk", DEFAULT_CHUNK))

    fn.__name__ = f"{view}_{kind}_ring"
    fn.__doc__ = f"{view}-level {kind} computed on a ring over the mesh's data axis (see ring.py)."
    return fn


for _view in ("global", "local"):
    for _kind in KINDS:
        register(f"{_view}_{_kind}_ring")(_ring_term(_kind, _view))
