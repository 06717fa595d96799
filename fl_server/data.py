"""Where a node's token windows come from: a pluggable source (real captures, or synthetic).

``load_partition(partition_id, num_partitions, cfg)`` is the one entry point the ClientApp uses.
The source is picked by the run config's ``data-source``; sources register themselves with
``register_source`` and take paths from the run config.

``"corpus"`` (``fl_server.simulation.corpus``) makes every IoT-23 capture and home event log
under the run config's ``data-dir`` one or more hubs, tokenised by the engine. The built-in
``"synthetic"`` source is deterministic per (seed, partition) and non-IID by construction:
each partition is a different Markov chain over a partly private slice of the vocabulary, the
way two homes differ in devices and habits, with a shared "protocol" part so a global model has
something common to learn.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from fl_server.run_config import RunConfig

Windows = npt.NDArray[np.int64]
Source = Callable[[int, int, RunConfig], Windows]
_SOURCES: dict[str, Source] = {}


def register_source(name: str, source: Source) -> None:
    """Make a data source selectable with ``data-source = "<name>"`` in the run config."""
    _SOURCES[name] = source


def synthetic_windows(
    partition_id: int,
    num_partitions: int,
    *,
    vocab_size: int,
    num_windows: int,
    window_len: int,
    seed: int = 0,
) -> Windows:
    """Token windows of one partition's own Markov chain (see module docstring)."""
    rng = np.random.default_rng([seed, partition_id, num_partitions])
    shared = max(2, vocab_size // 4)
    own = np.arange(shared, vocab_size)
    # Each partition prefers a different slice of the non-shared vocabulary.
    start = (partition_id * len(own)) // max(num_partitions, 1)
    slice_ = np.roll(own, -start)[: max(2, len(own) // 2)]
    states = np.concatenate([np.arange(shared), slice_])
    trans = rng.dirichlet(np.full(len(states), 0.1), size=len(states))
    out = np.empty((num_windows, window_len), np.int64)
    cur = rng.integers(len(states), size=num_windows)
    for t in range(window_len):
        out[:, t] = states[cur]
        u = rng.random(num_windows)[:, None]
        cur = np.minimum((u > np.cumsum(trans[cur], axis=1)).sum(axis=1), len(states) - 1)
    return out


def _synthetic(partition_id: int, num_partitions: int, cfg: RunConfig) -> Windows:
    return synthetic_windows(
        partition_id,
        num_partitions,
        vocab_size=cfg.vocab_size,
        num_windows=cfg.windows_per_node,
        window_len=cfg.window_len,
        seed=cfg.seed,
    )


register_source("synthetic", _synthetic)


def _corpus(partition_id: int, num_partitions: int, cfg: RunConfig) -> Windows:
    from fl_server.simulation.corpus import corpus_source  # noqa: PLC0415 (loads data lazily)

    return corpus_source(partition_id, num_partitions, cfg)


register_source("corpus", _corpus)


def load_partition(partition_id: int, num_partitions: int, cfg: RunConfig) -> Windows:
    """Token windows (N, T) of one node's partition, from the configured source."""
    if cfg.data_source not in _SOURCES:
        raise KeyError(f"unknown data-source {cfg.data_source!r} (known: {sorted(_SOURCES)})")
    return _SOURCES[cfg.data_source](partition_id, num_partitions, cfg)
