"""Diagnostics: what GIoT watches, its sources, store and node link; addresses, token redacted."""

from typing import Any

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.core import HomeAssistant
from homeassistant.util import dt as dt_util

from giot_engine.records import counts_dict

from .const import CONF_NODE_HOST, CONF_NODE_TOKEN, CONF_ZEEK_PATH
from .coordinator import GIoTConfigEntry

# Addresses and paths say where the home's devices, logs and servers are, the token is the
# node's secret: never in a shared report.
TO_REDACT = {
    CONF_NODE_HOST,
    CONF_NODE_TOKEN,
    CONF_ZEEK_PATH,
    "address",
    "name",
    "path",
    "detail",
    "explanation",
    "node_id",
    "superlink",
}


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
    node: dict[str, Any] | None = None
    if (link := runtime.link) is not None:
        hello = link.hello
        node = {
            "node_id": hello.node_id if hello else None,
            "node_version": hello.node_version if hello else None,
            "protocol": hello.protocol if hello else None,
            "status": dict(link.node_status),
        }
    return async_redact_data(
        {
            "entry": {"data": dict(entry.data), "options": dict(entry.options)},
            "hub": {
                "model_version": coordinator.hub.model_version,
                "last_training": coordinator.hub.last_training,
                "model_origin": coordinator.hub.model_origin,
                "federation_enabled": coordinator.federation_enabled,
                "federation_round": coordinator.hub.federation_round,
                "federation_status": coordinator.federation_status,
                "federation_paused": coordinator.hub.federation_paused,
                "last_participation": coordinator.hub.last_participation,
                "bytes_up": coordinator.hub.bytes_up,
                "bytes_down": coordinator.hub.bytes_down,
                "bytes_up_total": coordinator.hub.bytes_up_total,
                "bytes_down_total": coordinator.hub.bytes_down_total,
                "away_mode": coordinator.hub.away_mode,
                "sensitivity": coordinator.sensitivity,
            },
            "model": coordinator.detector.model_info,
            "node": node,
            "devices": devices,
            "sources": sources,
            "failing_sources": sorted(runtime.issues.source_errors),  # details hold paths
            "store": counts_dict(runtime.windows.stats),
            "dropped": runtime.ingest.dropped,
            "refused_network_devices": runtime.devices.refused,
        },
        TO_REDACT,
    )
