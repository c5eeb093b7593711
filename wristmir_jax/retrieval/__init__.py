"""Retrieval: batched embedding into an INDEX_DIR, exact and ScaNN coarse search (one searcher
per embedding kind: global and each bone, candidates merged), the jitted region-similarity
reranker, image/text/report queries, explanations from the retrieved cases, and the anatomy
classifier of drawn boxes."""
