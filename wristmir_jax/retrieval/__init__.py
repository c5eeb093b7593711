"""Retrieval: batched embedding into an INDEX_DIR, exact and ScaNN coarse search, the jitted
region-similarity reranker, and image/text/report queries."""
