"""Losses: contrastive objectives as pure functions `loss(emb, batch, cfg) -> (scalar, aux)`,
a registry by name, and a ring (shard_map + ppermute) variant for large global batches.
Imports only jax (and numpy)."""
