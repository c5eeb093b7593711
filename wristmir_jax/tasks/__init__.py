"""Tasks: what the one trainer (train/) trains, chosen by name with `cfg.task`.

A task is a module `wristmir_jax.tasks.<name>` providing
  resolve_config(cfg) -> cfg        sizes taken from the data, checks (idempotent)
  build_model(cfg) -> model         init(key, batch) -> (params, logical axes) (or init_params +
                                    logical_axes), encode(params, batch, train=, rng=) -> outputs,
                                    text_frozen
  init_batch(cfg) -> dict           host arrays with the batch's shapes (initialisation only)
  load_pretrained(params, cfg, shardings) -> params   weights from checkpoints, if any
  objective(cfg, mesh) -> fn        fn(outputs, batch) -> (scalar loss, aux dict)
  prepare_batch(batch) -> batch     on device, inside the jitted steps (e.g. relevance)
  data_sources(cfg) -> (train, val) random-access sources
  train_iterator(cfg, source)       resumable host batches (get_state / set_state)
  EVALUATORS                        {type name: train.evaluators.Evaluator class} for cfg.evals

Tasks sit above train/ (the trainer finds them by name) and below cli/.
"""
