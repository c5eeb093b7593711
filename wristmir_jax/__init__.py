"""wristmir-jax: region-aware retrieval of pediatric wrist radiographs, trained from reports alone.

Stages, one folder each, lowest first (lower layers never import higher ones; `make test`
checks the order with the import-linter contracts in pyproject.toml):
  schema      the findings contract shared by every stage
  synth/      procedural radiographs, bone boxes, free-text reports and gold findings
  reports/    de-identification, report mining, captions, report-derived relevance
  imaging/    image/DICOM loading, windowing, laterality, boxes, crops
  data/       TFDS/ArrayRecord dataset build and Grain input pipelines
  models/     functional Flax towers (ViT, ResNet, BERT) and global/local two-tower models
  losses/     contrastive objectives as pure functions, with a registry
  localize/   the bone localizer and its styloid refiner (Flax nets on models.conv)
  train/      mesh, sharding rules, optax, orbax, build_run, the jitted train step and loop,
              evaluators
  retrieval/  embedding store, ScaNN coarse search, jitted region reranker
  eval/       retrieval and diagnosis metrics, TREC export, plots and panels
  tasks/      what the trainer trains, by name (cfg.task): model, objective, data, evaluators
  bench/      throughput and memory benchmarks writing JSON
  cli/        the `wristmir` subcommands (thin wiring only)
"""

__version__ = "0.1.0"
