"""A hub's side of a federated round (interface; the round itself lands with the hubs issue).

``TaskAnswer`` is what the detector returns for a node's task, and what the integration turns
into a ``result`` frame of ``node_protocol``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class TaskAnswer:
    """The hub's answer to one train or evaluate task.

    ``status`` / ``reason`` are ``node_protocol.RESULT_STATUSES`` / ``REASONS``; ``metrics`` and
    ``arrays`` go back to the server as they are (a GSFS payload for train, nothing for
    evaluate). ``model_version`` / ``origin`` say which model the hub scores with afterwards
    (``origin`` is "local" or "global round N").
    """

    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    model_version: str | None = None
    origin: str | None = None
