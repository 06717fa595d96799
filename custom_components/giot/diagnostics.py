"""Diagnostics: what GIoT watches and how its sources and store are doing, addresses redacted."""

from typing import Any

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.core import HomeAssistant
from homeassistant.util import dt as dt_util

from giot_engine.records import counts_dict

from .const import CONF_NODE_HOST, CONF_ZEEK_PATH
from .coordinator import GIoTConfigEntry

# Addresses and paths say where the home's devices and logs are: never in a shared report.
TO_REDACT = {CONF_NODE_HOST, CONF_ZEEK_PATH, "address", "name", "path", "detail", "explanation"}


async def async_get_config_entry_diagnostics(
    hass: HomeAssistant, entry: GIoTConfigEntry
) -> dict[str, Any]:
    """Return diagnostics for the entry; device keys of network-only devices are numbered."""
    runtime = entry.runtime_data
    coordinator = runtime.coordinator
    now = dt_util.utcnow()
    devices = []
    for index, state in enumerate(runtime.devices.values()):
        devices.append(
            {
                "key": state.key if state.device_id else f"network_device_{index}",
                "name": state.name,
                "address": state.address,
                "linked": state.source_entity_id is not None,
                "score": state.score,
                "alarm": state.alarm(now),
                "alert_type": state.alert_type,
                "absence": state.absence,
                "found_by_giot": state.found,
                "severity": state.severity,
                "explanation": state.explanation,
                "snoozed": state.snoozed_until is not None,
                "observations": state.observations,
            }
        )
    sources: dict[str, Any] = {
        "state_collector": counts_dict(coordinator.state_collector.stats),
        "attribution": counts_dict(runtime.devices.attributor.stats),
    }
    if coordinator.netflow is not None:
        sources["netflow"] = counts_dict(coordinator.netflow.stats)
    if coordinator.zeek is not None:
        sources["zeek"] = {"status": coordinator.zeek.status, **counts_dict(coordinator.zeek.stats)}
    return async_redact_data(
        {
            "entry": {"data": dict(entry.data), "options": dict(entry.options)},
            "hub": {
                "model_version": coordinator.hub.model_version,
                "last_training": coordinator.hub.last_training,
                "federation_round": coordinator.hub.federation_round,
                "federation_status": coordinator.federation_status,
                "federation_paused": coordinator.hub.federation_paused,
                "away_mode": coordinator.hub.away_mode,
                "sensitivity": coordinator.sensitivity,
            },
            "model": coordinator.detector.model_info,
            "devices": devices,
            "sources": sources,
            "failing_sources": sorted(runtime.issues.source_errors),  # details hold paths
            "store": counts_dict(runtime.windows.stats),
            "dropped": runtime.ingest.dropped,
            "refused_network_devices": runtime.devices.refused,
        },
        TO_REDACT,
    )
