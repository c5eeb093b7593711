"""The bone localizer (distal radius, distal ulna, ulnar styloid): Flax networks on models.conv,
their losses, decoding and batched inference, above imaging/ (images, boxes, crops) and models/.

Modules:
  blocks           the conv blocks, upsampling, GIoU and parameter flattening both stages share
  localizer        LocalizerConfig, Localizer (batched jitted inference), save/load
  localizer_train  load_prepared, train_localizer, box_metrics
  refiner          RefinerConfig, Refiner: second stage for small boxes (the ulnar styloid) on
                   original-resolution patches, with fallback to the first-stage box
  refiner_train    WindowCollector, RefineSet, jitter_boxes, train_refiner, refine_on_windows
"""
