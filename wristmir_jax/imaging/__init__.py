"""Imaging: PNG/JPEG/DICOM loading and windowing, normalisation, laterality canonicalisation,
the Flax bone localizer (distal radius, distal ulna, ulnar styloid) and bone crops."""
