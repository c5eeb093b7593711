"""`wristmir build --manifest M --mined MINED --boxes B --out DATA_DIR`: the TFDS ArrayRecord
training dataset (see wristmir_jax.data.builder for what it holds and how inputs are joined)."""

from __future__ import annotations

import argparse
import json

from wristmir_jax.data.builder import BuildConfig, build_dataset


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="manifest.jsonl (images are relative to it)")
    p.add_argument("--mined", required=True, help="mined.jsonl (findings + captions)")
    p.add_argument("--boxes", required=True, help="boxes.jsonl (bone boxes, original pixels)")
    p.add_argument("--out", required=True, help="output dataset folder (DATA_DIR)")
    p.add_argument("--tokenizer", default=None,
                   help="a local transformers tokenizer folder, or 'minilm' for the packaged "
                        "all-MiniLM-L6-v2 one (default: build a word-piece vocabulary from the "
                        "training captions)")
    p.add_argument("--image-size", type=int, default=256, help="side of the canonical image")
    p.add_argument("--crop-size", type=int, default=128, help="side of each bone crop")
    p.add_argument("--max-len", type=int, default=32, help="caption length in tokens")
    p.add_argument("--crop-margin", type=float, default=0.2,
                   help="crop margin, fraction of the box's longer side")
    p.add_argument("--min-box-score", type=float, default=0.5,
                   help="boxes scoring lower are replaced by the anatomical prior")
    p.add_argument("--vocab-size", type=int, default=2048,
                   help="target size of a built word-piece vocabulary")
    p.add_argument("--num-shards", type=int, default=None,
                   help="ArrayRecord shards per split (default: chosen from the data size)")
    p.add_argument("--strict", action="store_true", help="stop (exit 2) at the first bad input")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DATA_DIR")
    p.add_argument("--workers", type=int, default=2,
                   help="image loading/cropping threads (the output is the same for any count)")


def run(args: argparse.Namespace) -> int:
    cfg = BuildConfig(image_size=args.image_size, crop_size=args.crop_size, max_len=args.max_len,
                      crop_margin=args.crop_margin, min_box_score=args.min_box_score,
                      vocab_size=args.vocab_size, num_shards=args.num_shards)
    meta = build_dataset(args.manifest, args.mined, args.boxes, args.out,
                         tokenizer_dir=args.tokenizer, cfg=cfg, strict=args.strict,
                         overwrite=args.overwrite, workers=args.workers)
    print(json.dumps({"out": args.out, "splits": meta["splits"], "counts": meta["counts"],
                      "vocab_size": meta["vocab_size"]}, sort_keys=True))
    return 0
