"""Tasks: what the one trainer (train/) trains, chosen by name with `cfg.task`.

A task is a module `wristmir_jax.tasks.<name>` providing
  resolve_config(cfg) -> cfg        sizes taken from the data, checks (idempotent)
  build_model(cfg) -> model         init(key, batch) -> (params, logical axes) (or init_params +
                                    logical_axes), encode(params, batch, train=, rng=) -> outputs,
                                    optionally text_frozen (a cached frozen text tower)
  init_batch(cfg) -> dict           host arrays with the batch's shapes (initialisation only)
  load_pretrained(params, cfg, shardings) -> params   optional: weights from checkpoints
  objective(cfg, mesh) -> fn        fn(outputs, batch) -> (scalar loss, aux dict); anything
                                    derived from the batch (e.g. report relevance) is computed here
  data_sources(cfg) -> (train, val) random-access sources
  train_iterator(cfg, source)       resumable host batches (get_state / set_state)
  EVALUATORS                        {type name: train.evaluators.Evaluator class} for cfg.evals

Tasks sit above train/ (the trainer finds them by name) and below cli/.
"""
