"""Caption tokenizers: a word-piece vocabulary built from the mined captions (the default, nothing
downloaded) or any transformers tokenizer in a local folder; both saved into DATA_DIR/tokenizer
as a transformers folder that `AutoTokenizer.from_pretrained(..., local_files_only=True)` loads.

The built vocabulary follows BERT's layout: lower-cased, [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3,
[MASK]=4, then word pieces. `tokenize` gives fixed-length int32 ids and masks ([CLS] ... [SEP],
padded with the tokenizer's pad id), the form the dataset stores and retrieval's text queries use.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.utils.pretrained import resolve_folder

TOKENIZER_SUBDIR = "tokenizer"
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_wordpiece(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 2048,
                    min_frequency: int = 1):
    """Trains a lower-cased BERT word-piece vocabulary on `texts`, saves it to `out_dir` as a
    BertTokenizerFast folder and returns the loaded tokenizer."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast  # seconds to import: only this path needs it

    texts = list(texts)
    if not texts:
        raise UserError("no captions to build a vocabulary from")
    wp = BertWordPieceTokenizer(lowercase=True, clean_text=True, strip_accents=True,
                                handle_chinese_chars=True)
    wp.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                           special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    wp.save_model(out_dir)  # vocab.txt, in id order
    tok = BertTokenizerFast(vocab=os.path.join(out_dir, "vocab.txt"), do_lower_case=True,
                            unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                            cls_token="[CLS]", mask_token="[MASK]")
    tok.save_pretrained(out_dir)
    return tok


def load_pretrained(path: str | os.PathLike):
    """A transformers tokenizer from a local folder (never downloads); "minilm" is the
    all-MiniLM-L6-v2 tokenizer of the packaged checkpoint."""
    from transformers import AutoTokenizer  # seconds to import: only tokenizer loading needs it

    path = resolve_folder(os.fspath(path))
    if not os.path.isdir(path):
        raise UserError("tokenizer folder not found", path=path)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises OSError/ValueError/others for unusable folders
        raise UserError(f"cannot load a tokenizer from this folder ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160]})", path=path) from None


def load(data_dir: str | os.PathLike):
    """The tokenizer a dataset was built with (DATA_DIR/tokenizer)."""
    return load_pretrained(os.path.join(os.fspath(data_dir), TOKENIZER_SUBDIR))


def tokenize(tokenizer, texts: str | Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (ids int32[N, max_len], mask int32[N, max_len]) with special tokens, truncated
    and padded to max_len. A single string gives shapes [max_len]."""
    single = isinstance(texts, str)
    batch = [texts] if single else list(texts)
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    enc = tokenizer(batch, max_length=max_len, truncation=True, padding="max_length",
                    add_special_tokens=True, return_attention_mask=True)
    ids = np.asarray(enc["input_ids"], np.int32).reshape(len(batch), max_len)
    mask = np.asarray(enc["attention_mask"], np.int32).reshape(len(batch), max_len)
    return (ids[0], mask[0]) if single else (ids, mask)


def vocab_size(tokenizer) -> int:
    """The embedding table size a text tower needs (covers added tokens too)."""
    return int(len(tokenizer))
