"""Config flow for GIoT: one entry per Home Assistant, created by hand or from a discovered node."""

from typing import Any, override

import probatio
from homeassistant.config_entries import ConfigFlow, ConfigFlowResult
from homeassistant.helpers.service_info.zeroconf import ZeroconfServiceInfo

from .const import CONF_NODE_HOST, CONF_NODE_PORT, DOMAIN


class GIoTConfigFlow(ConfigFlow, domain=DOMAIN):
    """Create the single GIoT entry.

    Detection runs inside Home Assistant without anything else, so the user step asks nothing; a
    GIoT node found by zeroconf is offered for confirmation and remembered for federated rounds.
    """

    VERSION = 1

    def __init__(self) -> None:
        """Start with no discovered node."""
        self._node_host: str | None = None
        self._node_port: int | None = None

    @override
    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Confirm setting up GIoT."""
        if user_input is not None:
            return self.async_create_entry(title="GIoT", data={})
        return self.async_show_form(step_id="user", data_schema=probatio.Schema({}))

    async def async_step_zeroconf(self, discovery_info: ZeroconfServiceInfo) -> ConfigFlowResult:
        """Offer a GIoT node announced on the local network."""
        self._node_host = discovery_info.host
        self._node_port = discovery_info.port
        self.context["title_placeholders"] = {"name": discovery_info.name.split(".")[0]}
        return await self.async_step_zeroconf_confirm()

    async def async_step_zeroconf_confirm(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Let the user accept the discovered node."""
        if user_input is not None:
            return self.async_create_entry(
                title="GIoT",
                data={CONF_NODE_HOST: self._node_host, CONF_NODE_PORT: self._node_port},
            )
        return self.async_show_form(
            step_id="zeroconf_confirm",
            description_placeholders={"host": f"{self._node_host}:{self._node_port}"},
        )
