"""Imaging: PNG/JPEG/DICOM loading and windowing, normalisation, laterality canonicalisation,
boxes and bone crops. No model here (the bone localizer is `wristmir_jax/localize/`).

Modules (import what you need):
  io           load_image(path) -> f32[H, W] in [0, 1]; ImageError
  preprocess   normalize(img, clip, clahe); prepare(img, laterality, size) -> (img, Geometry)
  crops        extract_crops(img, boxes, scores, laterality, ...) -> CropResult; BoxPrior
  boxes        read_manifest, read_boxes (gold/boxes JSON lines, COCO JSON, YOLO txt), box_iou
  jsonconfig   frozen dataclass configs saved as JSON next to safetensors weights
"""
