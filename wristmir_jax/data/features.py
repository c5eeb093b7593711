"""What one stored example holds (the TFDS feature spec) and how a stored example becomes a
training example with the BUILD_NOTES "Batch" fields (no batch axis).

Images and crops are 8-bit grey PNGs (TFDS decodes them with PIL, no TensorFlow needed);
the training example scales them to float32 in [0, 1]. Everything else is stored as the integer
and float arrays training and evaluation read directly.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from wristmir_jax.schema import NUM_REGIONS, RECORD_LEN

# Where each crop came from (imaging.crops policy), stored as an index into this tuple.
CROP_SOURCES: tuple[str, ...] = ("detected", "prior", "missing")

# Keys of a training example / batch (BUILD_NOTES "Batch"); `id` never goes to devices.
EXAMPLE_KEYS: tuple[str, ...] = ("image", "crops", "crop_mask", "global_tokens", "global_mask",
                                 "region_tokens", "region_mask", "record", "global_caption_id",
                                 "region_caption_id", "id")
HOST_ONLY_KEYS: frozenset[str] = frozenset({"id"})


def make_features(image_size: int, crop_size: int, max_len: int):
    """The tfds.features.FeaturesDict of one stored example."""
    import tensorflow_datasets as tfds

    f = tfds.features
    return f.FeaturesDict({
        "id": f.Text(),
        "patient_hash": f.Text(),
        "view": f.Text(),
        "laterality": f.Text(),
        "age_years": f.Scalar(dtype=np.float32),
        "image": f.Image(shape=(image_size, image_size, 1), dtype=np.uint8, encoding_format="png"),
        "crops": f.Sequence(f.Image(shape=(crop_size, crop_size, 1), dtype=np.uint8,
                                    encoding_format="png"), length=NUM_REGIONS),
        "crop_mask": f.Tensor(shape=(NUM_REGIONS,), dtype=np.float32),
        "crop_source": f.Tensor(shape=(NUM_REGIONS,), dtype=np.int32),
        "boxes": f.Tensor(shape=(NUM_REGIONS, 4), dtype=np.float32),
        "global_caption": f.Text(),
        "region_captions": f.Sequence(f.Text(), length=NUM_REGIONS),
        "global_tokens": f.Tensor(shape=(max_len,), dtype=np.int32),
        "global_mask": f.Tensor(shape=(max_len,), dtype=np.int32),
        "region_tokens": f.Tensor(shape=(NUM_REGIONS, max_len), dtype=np.int32),
        "region_mask": f.Tensor(shape=(NUM_REGIONS, max_len), dtype=np.int32),
        "record": f.Tensor(shape=(RECORD_LEN,), dtype=np.int32),
        "fracture_labels": f.Tensor(shape=(NUM_REGIONS,), dtype=np.int32),
        "global_caption_id": f.Scalar(dtype=np.int32),
        "region_caption_id": f.Tensor(shape=(NUM_REGIONS,), dtype=np.int32),
    })


def to_uint8(x: np.ndarray) -> np.ndarray:
    """f32 in [0, 1] -> uint8 (rounded), the stored form of images and crops."""
    return np.round(np.clip(np.asarray(x, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def to_training_example(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A decoded stored example (TFDS numpy form) -> training example (Batch fields, no batch
    axis): images as f32 in [0, 1] with a channel axis, integers as int32, `id` as numpy str."""
    image = np.asarray(stored["image"], np.float32) * np.float32(1.0 / 255.0)
    crops = np.stack([np.asarray(c) for c in stored["crops"]]).astype(np.float32) * np.float32(1.0 / 255.0)
    if image.ndim == 2:
        image = image[..., None]
    if crops.ndim == 3:
        crops = crops[..., None]
    return {
        "image": image,
        "crops": crops,
        "crop_mask": np.asarray(stored["crop_mask"], np.float32),
        "boxes": np.asarray(stored["boxes"], np.float32).reshape(-1, 4),
        "global_tokens": np.asarray(stored["global_tokens"], np.int32),
        "global_mask": np.asarray(stored["global_mask"], np.int32),
        "region_tokens": np.asarray(stored["region_tokens"], np.int32),
        "region_mask": np.asarray(stored["region_mask"], np.int32),
        "record": np.asarray(stored["record"], np.int32),
        "global_caption_id": np.int32(stored["global_caption_id"]),
        "region_caption_id": np.asarray(stored["region_caption_id"], np.int32),
        "id": np.str_(_text(stored["id"])),
    }
