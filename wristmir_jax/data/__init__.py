"""Data: the TFDS builder writing ArrayRecord shards, the word-piece tokenizer, and Grain input
pipelines (shuffle, per-process sharding, numpy augmentation, checkpointable iterators)."""
