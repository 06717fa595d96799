"""The Flower run config as one typed, frozen object.

Defaults live in one place only: ``[tool.flwr.app.config]`` in ``pyproject.toml``. They must be
there, because a SuperLink refuses run-config keys that table does not declare, and Flower itself
merges it under ``flwr run --run-config`` overrides into ``context.run_config``. Reading the same
table here (the FAB carries ``pyproject.toml`` next to ``fl_server/``) gives the in-process users
(the simulation grid, tests, benchmarks), for which no SuperLink fills ``context.run_config``, the
same defaults as a deployment. The fields of ``RunConfig`` only add the type each key is read
as; the table and the fields must name the same keys, which ``defaults()`` checks on first use,
so that a key added to one and not the other fails every run, not only a test.

Values are converted the way the apps always read them (``int(...)``, ``float(...)``), so an
override such as ``round-timeout=60`` (a TOML integer) still reads as 60.0.
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

ConfigValue = bool | int | float | str  # what a Flower run config holds (flat keys)
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Every run-config key the apps read; the key is the field name with ``-`` for ``_``.

    Meanings are documented next to the defaults, in ``pyproject.toml``.
    """

    # rounds and strategy
    num_server_rounds: int
    strategy: str
    fraction_train: float
    fraction_evaluate: float
    min_nodes: int
    round_timeout: float
    seed: int
    # local training
    local_steps: int
    batch_size: int
    lr: float
    proximal_mu: float
    # model
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    # data
    data_source: str
    data_dir: str
    windows_per_node: int
    window_len: int
    # GSFS server
    server_opt: str
    gsfs_server_lr: float
    gsfs_server_momentum: float
    gsfs_mean_over: str
    gsfs_selection: str
    server_lr: float
    gsfs_default_budget: int
    gsfs_min_budget: int
    gsfs_max_budget: int
    gsfs_target_round_s: float
    gsfs_deadline_quantile: float
    gsfs_initial_deadline_s: float
    gsfs_min_steps: int
    gsfs_max_steps: int
    downlink_threshold: float
    max_update_norm: float
    robust: str
    clip_norm: float
    dp_noise: float
    dp_clip: float
    gsfs_shared_index: bool
    gsfs_shared_clip: float
    checkpoint_dir: str
    # round 0 and signatures
    base_model: str
    signing_key: str

    @classmethod
    def load(
        cls,
        run_config: Mapping[str, object] | None = None,
        overrides: RunConfig | Mapping[str, object] | None = None,
    ) -> RunConfig:
        """Defaults, under Flower's run config, under ``overrides`` (tests, benchmarks).

        A ``RunConfig`` as ``overrides`` sets every key, so it is the result as it stands.
        """
        if isinstance(overrides, RunConfig):
            return overrides
        merged = {**defaults(), **dict(run_config or {}), **dict(overrides or {})}
        unknown = sorted(set(merged) - set(_CONVERTERS))
        if unknown:  # a typo would otherwise be silently ignored
            raise KeyError(f"unknown run-config keys {unknown} (declared: pyproject.toml)")
        values: dict[str, Any] = {_field(k): conv(merged[k]) for k, conv in _CONVERTERS.items()}
        return cls(**values)

    def with_overrides(self, overrides: Mapping[str, object]) -> RunConfig:
        """Return a copy with keys set in the run config's spelling, checked and converted."""
        return RunConfig.load(self.as_run_config(), overrides)

    def as_run_config(self) -> dict[str, ConfigValue]:
        """Return the mapping Flower would hold in ``context.run_config`` (``kebab-case``)."""
        return {_key(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}


def _key(field_name: str) -> str:
    return field_name.replace("_", "-")


def _field(key: str) -> str:
    return key.replace("-", "_")


def _converters() -> dict[str, Callable[[Any], ConfigValue]]:
    hints = get_type_hints(RunConfig)
    return {_key(f.name): hints[f.name] for f in dataclasses.fields(RunConfig)}


_CONVERTERS = _converters()


@functools.cache
def defaults() -> dict[str, ConfigValue]:
    """``[tool.flwr.app.config]``, checked against the fields of ``RunConfig``."""
    with PYPROJECT.open("rb") as f:
        table: dict[str, ConfigValue] = tomllib.load(f)["tool"]["flwr"]["app"]["config"]
    missing, extra = set(_CONVERTERS) - set(table), set(table) - set(_CONVERTERS)
    if missing or extra:
        raise RuntimeError(
            f"{PYPROJECT.name} [tool.flwr.app.config] and fl_server.run_config.RunConfig differ:"
            f" only in RunConfig {sorted(missing)}, only in the table {sorted(extra)}"
        )
    wrong = sorted(k for k, v in table.items() if type(v) is not _CONVERTERS[k])
    if wrong:  # Flower hands the table's own types to the apps
        raise RuntimeError(f"{PYPROJECT.name}: defaults of {wrong} are not of RunConfig's type")
    return dict(table)
