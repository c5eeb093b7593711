"""The demo: global + local encoders on the built synthetic dataset (~1400 training images,
128 px images, 64 px crops), 10-15 minutes on 2 CPU cores (it depends on the CPU).

Image towers: small GroupNorm ResNets; the bone-crop tower max-pools its last feature map,
standardises each crop (a fracture is a few cells of the map: a mean dilutes it) and is
conditioned on the bone by FiLM in every block (`local.region_film`: a lateral view's ulna crop
shows the overlapping radius, and only bone-aware convolutions can tell whose fracture it is).
Losses: multi-positive image<->caption terms, globally and per bone, plus `local_supcon`
(crop<->crop positives: other crops of the same bone whose mined findings are relevant), plus
`region_grounding` (losses/region_grounding.py): each region caption's words attend over the
global image's 32 x 32 stage-0 grid (an ulnar styloid is ~8 px at 128 px: the 4 x 4 last map
cannot point at it, and on the 16 x 16 stage-1 grid its pointing game was 0.83) and are taught
the localizer's box of their bone, the boxes the crops are cut around. That is what phrase
grounding measures, and it also lifted retrieval and the box classifier (BUILD_NOTES, Method
experiments). Text: the
packaged all-MiniLM-L6-v2, frozen, its features computed once per distinct caption
(models/text_cache.py); only the projection heads learn on the text side. The dataset must be
built with `wristmir build ... --tokenizer minilm` (the demo does).

Optimiser: Adam 2e-3 (b2 0.999), 10 warm-up steps, cosine decay over 600 steps, no weight decay,
no gradient clipping, no augmentation (at this step budget augmentation cost 0.09 probe AUROC).
With the base recipe (AdamW 2e-3, b2 0.98, decay 0.05, clipping at 1, augmentation) the crop
tower did not leave its collapsed start in 300 steps (region embeddings' mean cosine 0.96-0.99,
probe AUROC 0.64); with Adam and none of those it spreads and learns the fracture (BUILD_NOTES
"End to end" has every run).

Evaluators: validation loss and `knn_probe` (kNN fracture F1 and linear-probe AUROC per bone on
the validation split) every 200 steps; the best checkpoint is the one with the highest two-stage
probe AUROC.

Variants (comma-separated): `configs/cpu_demo.py:quick` is the demo's --quick run (40 steps of 16);
`:vit` swaps in the ViT towers of the `cpu_demo_vit` preset (e.g. `:vit,quick`).
`:nogrounding` leaves the region_grounding term and the word outputs out (the comparison run).
`:words` adds the word-region alignment term (losses/word_region.py, GLoRIA's unsupervised local
alignment of the global caption, weight 1); BUILD_NOTES has it on vs off.
`--config.data.source=synthetic` trains on in-memory synthetic data instead of DATA_DIR.
"""

from wristmir_jax.train.defaults import base_config


def get_config(arg=None):
    c = base_config("cpu_demo")
    c.data.source = "tfds"
    c.data.order = "grain"
    c.data.global_batch_size = 32
    # Decode in the trainer's process: a Grain worker process competes with XLA for the 2 cores
    # (median step 1.15 s with one worker, 0.97 s without; decoding a batch takes ~10 ms).
    c.data.worker_count = 0
    c.data.augment = False
    c.data.eval_batches = 4
    c.data.synthetic.num_train = 1400
    c.data.synthetic.num_val = 128
    # local_supcon at twice the weight of the caption terms: chosen on the validation split (probe
    # AUROC 0.884 / 0.907 / 0.889 at weights 1 / 2 / 4; BUILD_NOTES "End to end", stop 14).
    c.loss.terms = {"global_multipos": 1.0, "local_multipos": 1.0, "local_supcon": 2.0}
    c.loss.params = {"global_multipos": {"threshold": 0.75}, "local_multipos": {"threshold": 0.75},
                     "local_supcon": {"threshold": 0.75, "temperature": 0.1}}
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 10
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 0.0
    c.train.steps = 600
    c.train.log_every = 10
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    c.train.keep = 2
    c.train.keep_best = 1
    # The best checkpoint (what the demo embeds) by what the demo judges, not by the loss: the
    # mean fracture AUROC of a linear probe on two-stage (global + bone) validation embeddings.
    c.evals.knn_probe = {"type": "knn_probe", "every": 0}
    c.train.best_metric = "knn_probe/two_stage_mean_auroc"
    c.train.best_mode = "max"
    variants = set((arg or "").split(",")) - {""}
    unknown = variants - {"quick", "vit", "words", "nogrounding"}
    if unknown:
        raise ValueError(f"unknown cpu_demo variant(s) {sorted(unknown)} (use quick, vit, words, nogrounding)")
    grounding = "nogrounding" not in variants
    if "vit" in variants:
        from wristmir_jax.models.presets import model_config

        c.model = model_config("cpu_demo_vit")
    else:
        c.model.local.pool = "max"
        c.model.local.input_norm = "per_image"
        c.model.local.region_film = True
    if grounding or "words" in variants:
        c.model.word_features = True
        if "vit" not in variants:
            c.model.image.spatial_stage = 0  # a 32 x 32 grid (4 px cells; the last map is 4 x 4)
    if "words" in variants:
        c.loss.terms["word_region"] = 1.0
        c.loss.params["word_region"] = {"agg": 5.0}
    if grounding:
        c.model.region_words = True
        c.loss.terms["region_grounding"] = 1.0
    c.model.text.pretrained = "minilm"
    c.model.text.frozen = True
    if "quick" in variants:
        # A smoke run of the whole path: half batches, one validation at the end.
        c.data.global_batch_size = 16
        c.data.eval_batches = 2
        c.train.steps = 40
        c.optim.warmup_steps = 5
        c.train.eval_every = 40
        c.train.checkpoint_every = 40
    return c
