"""Logging for the CLI: stage messages and counts on stderr. Never log report text or patient IDs:
log counts, ids of synthetic or hashed records, and reasons only."""

from __future__ import annotations

import logging
import sys

_CONFIGURED = False


def get_logger(name: str = "wristmir") -> logging.Logger:
    global _CONFIGURED
    if not _CONFIGURED:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s] %(message)s", "%H:%M:%S"))
        root = logging.getLogger("wristmir")
        root.addHandler(h)
        root.setLevel(logging.INFO)
        root.propagate = False
        _CONFIGURED = True
    return logging.getLogger(name if name.startswith("wristmir") else f"wristmir.{name}")
