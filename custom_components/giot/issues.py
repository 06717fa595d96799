"""GIoT's health, as repair issues: unreadable flow sources, no data, a full disk, the node.

Raised and withdrawn as the health changes; every issue goes when the entry unloads (a reload
raises those that still apply again). Named ``issues`` rather than ``repairs``: Home
Assistant takes a ``repairs`` module to be the integration's fix-flow platform.
"""

import shutil
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import issue_registry as ir
from homeassistant.util import dt as dt_util

from .const import CONF_NETFLOW_PORT, CONF_ZEEK_PATH, DOMAIN, NO_DATA_AFTER
from .detector_runner import DetectorRunner
from .devices import WatchedDevices
from .models import HubState
from .netflow_listener import NetFlowListener
from .store import WindowStore
from .zeek_tail import TailStatus

MIN_FREE_BYTES = 50 * 1024 * 1024

type NodeProblem = Literal["protocol", "model"]


class HealthIssues:
    """Keeps the repair issues in step with the sources, the data and the disk."""

    def __init__(
        self,
        hass: HomeAssistant,
        options: Mapping[str, Any],
        *,
        devices: WatchedDevices,
        hub: HubState,
        windows: WindowStore,
        runner: DetectorRunner,
        started: datetime,
    ) -> None:
        """Nothing is wrong yet; ``started`` is when no data counts from on a fresh start."""
        self._hass = hass
        self._options = options
        self._devices = devices
        self._hub = hub
        self._windows = windows
        self._runner = runner
        self._started = started
        self.source_errors: dict[str, str] = {}
        self.storage_free: int | None = None

    @property
    def has_sources(self) -> bool:
        """Whether anything is configured that should be delivering data."""
        return bool(
            self._options.get(CONF_NETFLOW_PORT)
            or self._options.get(CONF_ZEEK_PATH)
            or self._devices.has_registry_devices
        )

    @callback
    def async_zeek_status(self, status: TailStatus, error: str | None) -> None:
        """Raise or clear the unreadable-source repair as soon as the tail's health changes."""
        if status in (TailStatus.OK, TailStatus.STARTING):
            self.source_errors.pop("zeek", None)
        else:
            self.source_errors["zeek"] = f"{self._options[CONF_ZEEK_PATH]} ({error})"
        self.async_update(dt_util.utcnow())

    async def async_start_netflow(self, netflow: NetFlowListener | None) -> None:
        """Bind the NetFlow port; a port in use is a repair, retried every housekeeping."""
        if netflow is None or netflow.running:
            return
        try:
            await netflow.async_start()
        except OSError as err:
            self.source_errors["netflow"] = f"UDP port {netflow.port} ({err.strerror})"
        else:
            self.source_errors.pop("netflow", None)

    async def async_check_disk(self) -> None:
        """Measure the free space of Home Assistant's configuration disk (in the executor)."""
        self.storage_free = await self._hass.async_add_executor_job(
            _free_bytes, self._hass.config.path()
        )

    @callback
    def async_update(self, now: datetime) -> None:
        """Raise the issues that apply now, withdraw the others."""
        for source in ("zeek", "netflow"):
            issue_id = f"flow_source_unreadable_{source}"
            if (detail := self.source_errors.get(source)) is not None:
                ir.async_create_issue(
                    self._hass,
                    DOMAIN,
                    issue_id,
                    is_fixable=False,
                    severity=ir.IssueSeverity.ERROR,
                    translation_key="flow_source_unreadable",
                    translation_placeholders={"source": source, "detail": detail},
                )
            else:
                ir.async_delete_issue(self._hass, DOMAIN, issue_id)
        since = max(self._hub.last_data or self._started, self._started)
        if self.has_sources and now - since >= NO_DATA_AFTER:
            ir.async_create_issue(
                self._hass,
                DOMAIN,
                "no_data",
                is_fixable=False,
                severity=ir.IssueSeverity.WARNING,
                translation_key="no_data",
            )
        else:
            ir.async_delete_issue(self._hass, DOMAIN, "no_data")
        if (
            self._windows.disk_full
            or self._runner.detector.model_info.get("disk_full")
            or (self.storage_free is not None and self.storage_free < MIN_FREE_BYTES)
        ):
            ir.async_create_issue(
                self._hass,
                DOMAIN,
                "storage_full",
                is_fixable=False,
                severity=ir.IssueSeverity.ERROR,
                translation_key="storage_full",
                translation_placeholders={"free_mb": str((self.storage_free or 0) // 2**20)},
            )
        else:
            ir.async_delete_issue(self._hass, DOMAIN, "storage_full")

    @callback
    def async_node_incompatible(self, cause: NodeProblem, detail: str | None) -> None:
        """Raise (``detail``) or clear (None) the repair for a node or model GIoT cannot use.

        Two causes, each cleared by its own success: the link's protocol (a good handshake)
        and the federation's model (a round answered ``ok``, or a global model taken).
        """
        issue_id = f"node_incompatible_{cause}"
        if detail is None:
            ir.async_delete_issue(self._hass, DOMAIN, issue_id)
            return
        ir.async_create_issue(
            self._hass,
            DOMAIN,
            issue_id,
            is_fixable=False,
            severity=ir.IssueSeverity.ERROR,
            translation_key="node_incompatible",
            translation_placeholders={"detail": detail},
        )

    @callback
    def async_node_unreachable(self, address: str | None) -> None:
        """Raise the repair for a node unreachable for a while (at ``address``), or clear it."""
        if address is None:
            ir.async_delete_issue(self._hass, DOMAIN, "node_unreachable")
            return
        ir.async_create_issue(
            self._hass,
            DOMAIN,
            "node_unreachable",
            is_fixable=False,
            severity=ir.IssueSeverity.WARNING,
            translation_key="node_unreachable",
            translation_placeholders={"address": address},
        )


@callback
def async_delete_issues(hass: HomeAssistant) -> None:
    """Withdraw GIoT's repair issues: nothing is left to fix once the entry is unloaded."""
    registry = ir.async_get(hass)
    for domain, issue_id in list(registry.issues):
        if domain == DOMAIN:
            ir.async_delete_issue(hass, DOMAIN, issue_id)


def _free_bytes(path: str) -> int:
    return shutil.disk_usage(path).free
