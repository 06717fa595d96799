"""Detection metrics of EVALUATION.md: ``fl_server.detection_metrics``, under the old name.

The base model's builder (``giot-server base-model``) measures with the same code, so it lives in
the server world; benchmarks keep importing it from here.
"""

from __future__ import annotations

from fl_server.detection_metrics import (
    DAY_S,
    WINDOW_S,
    CaptureMetrics,
    auroc,
    capture_metrics,
    prf,
    scored_mask,
)

__all__ = [
    "DAY_S",
    "WINDOW_S",
    "CaptureMetrics",
    "auroc",
    "capture_metrics",
    "prf",
    "scored_mask",
]
