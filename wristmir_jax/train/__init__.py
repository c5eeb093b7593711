"""Training: mesh and logical-axis sharding rules, optax optimizers, the pure jitted train step,
orbax composite checkpoints, multi-host initialisation, logging, and the trainer loop."""
