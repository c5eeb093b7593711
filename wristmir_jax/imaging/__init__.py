"""Imaging: PNG/JPEG/DICOM loading and windowing, normalisation, laterality canonicalisation,
the Flax bone localizer (distal radius, distal ulna, ulnar styloid) and bone crops.

Modules (import what you need; only `localizer*` import JAX/Flax):
  io           load_image(path) -> f32[H, W] in [0, 1]; ImageError
  preprocess   normalize(img, clip, clahe); prepare(img, laterality, size) -> (img, Geometry)
  crops        extract_crops(img, boxes, scores, laterality, ...) -> CropResult; BoxPrior
  boxes        read_manifest, read_boxes (gold/boxes JSON lines, COCO JSON, YOLO txt), box_iou
  localizer    LocalizerConfig, Localizer (batched jitted inference), save/load
  localizer_train  load_prepared, train_localizer, box_metrics
  refiner      RefinerConfig, Refiner: second stage for small boxes (the ulnar styloid) on
               original-resolution patches, with fallback to the first-stage box
  refiner_train    WindowCollector, RefineSet, jitter_boxes, train_refiner, refine_on_windows
"""
