"""Training: mesh and logical-axis sharding rules, optax optimizers, the pure jitted train step,
`build_run` (setup.py: one setup for the trainer, benches and tests), evaluators, orbax composite
checkpoints, multi-host initialisation, logging, and the trainer loop. What is trained is a task
found by name (`cfg.task`, wristmir_jax/tasks/)."""
