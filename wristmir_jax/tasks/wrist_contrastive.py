"""The default task: global + per-bone image/report contrastive encoders (models.WristModel,
losses.objective) on DATA_DIR (or in-memory synthetic data).

Evaluators: `val_loss` (train/evaluators.py) and `knn_probe`, what the demo judges, measured on the
validation split in memory: every validation image is embedded, then (1) kNN fracture diagnosis
per bone, each validation image querying the others (its own patient excluded) with global-only,
region-only and two-stage retrieval (the config's `retrieval` settings), F1 per bone and the mean;
(2) a linear probe per bone fitted on the embedded training split, AUROC per bone and the mean.
Both are eval/evaluate.py's functions on in-memory arrays, so the figures equal what `embed` +
`evaluate` give for the same params and split.
"""

from __future__ import annotations

import math
import types

import jax
import ml_collections
import numpy as np

from wristmir_jax import losses, models, schema
from wristmir_jax.data.source import DatasetSource, read_meta
from wristmir_jax.data.synthetic import SyntheticSource
from wristmir_jax.errors import UserError
from wristmir_jax.eval.evaluate import knn_diagnosis, linear_probe
from wristmir_jax.models.hf_import import apply_pretrained
from wristmir_jax.reports.relevance import relevance
from wristmir_jax.retrieval.query import Retriever
from wristmir_jax.retrieval.rerank import settings as rerank_settings
from wristmir_jax.retrieval.store import Index, IndexArrays, patient_codes
from wristmir_jax.train.evaluators import Evaluator, ValLoss, host
from wristmir_jax.train.inputs import SourceBatches
from wristmir_jax.train.mesh import replicated

FROZEN_TEXT_PATTERNS = (r"^text/", r"^local_text/")


def resolve_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with the model's input sizes taken from the data (DATA_DIR meta for tfds).
    Resolving a resolved config changes nothing."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    if cfg.data.source == "tfds":
        if not cfg.data.dir:
            raise UserError("data.dir is empty: pass --config.data.dir=DATA_DIR (built by "
                            "`wristmir build`)")
        meta = read_meta(cfg.data.dir)
        cfg.model.image.image_size = int(meta["image_size"])
        cfg.model.local.crop_size = int(meta["crop_size"])
        cfg.model.text.max_len = int(meta["max_len"])
        cfg.model.text.vocab_size = int(meta["vocab_size"])
    elif cfg.data.source != "synthetic":
        raise UserError(f"data.source must be 'tfds' or 'synthetic', got {cfg.data.source!r}")
    if cfg.model.text.get("frozen"):
        # The text tower(s) do not train (their features come from TextFeatureCache); written
        # into the resolved config so a restore builds the same optimizer.
        cfg.optim.freeze = tuple(dict.fromkeys(tuple(cfg.optim.freeze) + FROZEN_TEXT_PATTERNS))
    return cfg


def build_model(cfg: ml_collections.ConfigDict):
    return models.build(cfg.model, int(cfg.model.text.vocab_size))


def init_batch(cfg: ml_collections.ConfigDict, batch_size: int = 2) -> dict:
    """Zeros with the shapes and dtypes of a batch (ARCHITECTURE.md "Contracts") for cfg.model."""
    m = cfg.model
    s, c, L = int(m.image.image_size), int(m.local.crop_size), int(m.text.max_len)
    b, r = int(batch_size), schema.NUM_REGIONS
    f32, i32 = np.float32, np.int32
    return {"image": np.zeros((b, s, s, 1), f32), "crops": np.zeros((b, r, c, c, 1), f32),
            "crop_mask": np.ones((b, r), f32), "global_tokens": np.zeros((b, L), i32),
            "global_mask": np.ones((b, L), i32), "region_tokens": np.zeros((b, r, L), i32),
            "region_mask": np.ones((b, r, L), i32), "record": np.zeros((b, schema.RECORD_LEN), i32),
            "global_caption_id": np.arange(b, dtype=i32),
            "region_caption_id": np.arange(b * r, dtype=i32).reshape(b, r)}


def load_pretrained(params, cfg: ml_collections.ConfigDict, p_shard):
    """Params with the checkpoint weights of every tower whose `pretrained` is set, placed with
    the params' shardings (every process reads the same files, so each fills its own shards)."""
    towers = (cfg.model.text, cfg.model.image, cfg.model.local)
    if not any(t.get("pretrained") for t in towers):
        return params
    loaded = apply_pretrained(params, cfg.model)

    def place(new, old, sh):
        if new is old:
            return old
        arr = np.asarray(new)
        return jax.make_array_from_callback(arr.shape, sh, lambda idx: arr[idx])

    return jax.tree.map(place, loaded, params, p_shard)


def objective(cfg: ml_collections.ConfigDict, mesh):
    """The configured loss terms. The ring multipos terms get the relevance function and compute
    relevance block by block for the pairs each device scores (a pod step never holds the
    [4, B, B] array); for terms that read the dense `batch["relevance"]` it is computed here, on
    device, from the batch's records."""
    fn = losses.objective(cfg.loss, mesh=mesh).with_relevance_fn(relevance)
    if not fn.reads_dense_relevance:
        return fn

    def with_dense_relevance(outputs: dict, batch: dict):
        if "relevance" not in batch:
            batch = {**batch, "relevance": relevance(batch["record"], batch["record"])}
        return fn(outputs, batch)

    with_dense_relevance.reads_dense_relevance = True
    return with_dense_relevance


def data_sources(cfg: ml_collections.ConfigDict):
    """(train source, val source): random-access sources for the two splits."""
    if cfg.data.source == "synthetic":
        s = cfg.data.synthetic
        kw = dict(image_size=cfg.model.image.image_size, crop_size=cfg.model.local.crop_size,
                  max_len=cfg.model.text.max_len, vocab_size=cfg.model.text.vocab_size)
        return (SyntheticSource(s.num_train, seed=s.seed, **kw),
                SyntheticSource(s.num_val, seed=s.seed + 1000, **kw))
    return DatasetSource(cfg.data.dir, "train"), DatasetSource(cfg.data.dir, cfg.data.val_split)


def train_iterator(cfg: ml_collections.ConfigDict, source):
    """`data.order`: "global" (SourceBatches: the same global batches for any process count)
    or "grain" (data.pipeline: per-process shards, worker processes, augmentation)."""
    if cfg.data.order == "global":
        return SourceBatches(source, cfg.data.global_batch_size, seed=cfg.seed)
    if cfg.data.order != "grain":
        raise UserError(f"data.order must be 'global' or 'grain', got {cfg.data.order!r}")
    from wristmir_jax.data.pipeline import make_pipeline  # Grain worker machinery, only here

    return make_pipeline(source, "train", global_batch_size=cfg.data.global_batch_size,
                         seed=cfg.seed, augment=bool(cfg.data.augment),
                         worker_count=int(cfg.data.worker_count))


# ---------------------------------------------------------------------------------------------
# knn_probe
# ---------------------------------------------------------------------------------------------
_EMB_KEYS = ("global_img", "region_img")


def _patients(source, n: int) -> np.ndarray:
    """Hashed patient per example (a built split stores them); else each example its own."""
    if hasattr(source, "stored"):
        return np.array([bytes(source.stored(i).get("patient_hash", b"")).decode() or f"#{i}"
                         for i in range(n)])
    return np.array([f"#{i}" for i in range(n)])


class KnnProbe(Evaluator):
    """See the module docstring. Metrics: `{method}_mean_f1`, `{method}_f1/{bone}` (kNN) and,
    with `probe`, `{method}_mean_auroc`, `{method}_auroc/{bone}` (linear probe), for method in
    global, region, two_stage. `train_examples` > 0 fits the probe on the first that many
    training examples only."""

    def __init__(self, name, run, sources, every: int = 0, knn_k: int = 0, probe: bool = True,
                 train_examples: int = 0):
        super().__init__(name, run, sources, every)
        self.knn_k = int(knn_k) or int(run.cfg.get("retrieval", {}).get("knn_k", 10))
        self.probe = bool(probe)
        self.train_n = min(int(train_examples) or len(self.train_source), len(self.train_source))
        self.settings = rerank_settings(run.cfg)
        self.val_codes = patient_codes(_patients(self.val_source, len(self.val_source)))
        model, rep = run.model, replicated(run.mesh)

        def embed(params, batch):
            out = model.encode(params, batch, train=False, rng=None)
            return {**{k: out[k] for k in _EMB_KEYS}, "crop_mask": batch["crop_mask"],
                    "record": batch["record"]}

        self._embed = jax.jit(embed, out_shardings=rep)

    def _embed_split(self, params, source, n: int) -> dict[str, np.ndarray]:
        gbs = int(self.run_.cfg.data.global_batch_size)
        it = SourceBatches(source, gbs, seed=0, shuffle=False)
        parts: dict[str, list] = {}
        for _ in range(math.ceil(n / gbs)):
            out = self._embed(params, self.run_.global_batch(next(it)))
            for k, v in out.items():
                parts.setdefault(k, []).append(host(v))
        return {k: np.concatenate(v)[:n] for k, v in parts.items()}  # the last batch wraps

    def run(self, params) -> dict[str, float]:
        n = len(self.val_source)
        v = self._embed_split(params, self.val_source, n)
        d = v["global_img"].shape[1]
        arrays = IndexArrays(global_img=v["global_img"], region_img=v["region_img"],
                             crop_mask=v["crop_mask"], global_txt=np.zeros((n, d), np.float32),
                             region_txt=np.zeros((n, schema.NUM_REGIONS, d), np.float32),
                             ids=np.array([str(i) for i in range(n)]),
                             patients=np.array([str(c) for c in self.val_codes]),
                             records=v["record"], boxes=np.zeros((n, schema.NUM_REGIONS, 4)),
                             images=np.array([""] * n))
        retriever = Retriever(Index("<memory>", arrays, {}), self.settings)
        q = retriever.from_index_items(np.arange(n))
        k = min(self.knn_k, n - 1)
        glob = retriever.image_to_image(q, k=k, method="global")
        rankings = {}
        for r in schema.REGIONS:
            rankings[(r, "global")] = glob
            for m in ("region", "two_stage"):
                rankings[(r, m)] = retriever.image_to_image(q, region=r, k=k, method=m)
        labels = schema.fracture_labels(v["record"])
        out: dict[str, float] = {}
        for m, res in knn_diagnosis(rankings, labels, labels, k).items():
            out[f"{m}_mean_f1"] = res["mean_f1"]
            out.update({f"{m}_f1/{b}": f for b, f in res["f1"].items()})
        if self.probe:
            t = self._embed_split(params, self.train_source, self.train_n)
            fitted_on = types.SimpleNamespace(global_img=t["global_img"], region_img=t["region_img"],
                                              crop_mask=t["crop_mask"], records=t["record"])
            for m, res in linear_probe(fitted_on, q, labels).items():
                out[f"{m}_mean_auroc"] = res["mean_auroc"]
                out.update({f"{m}_auroc/{b}": a for b, a in res["auroc"].items()})
        # undefined values (a bone without positives in the split) are left out, not NaN
        return {name: float(x) for name, x in out.items() if x is not None and math.isfinite(x)}


EVALUATORS = {"val_loss": ValLoss, "knn_probe": KnnProbe}
