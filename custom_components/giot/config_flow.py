"""Config flow for GIoT: one entry per Home Assistant, created by hand or from a discovered node."""

from typing import Any, override

import probatio
from homeassistant.config_entries import (
    ConfigEntry,
    ConfigEntryState,
    ConfigFlow,
    ConfigFlowResult,
    OptionsFlowWithReload,
)
from homeassistant.core import callback
from homeassistant.helpers.selector import (
    AreaSelector,
    AreaSelectorConfig,
    BooleanSelector,
    DeviceSelector,
    DeviceSelectorConfig,
    LabelSelector,
    LabelSelectorConfig,
    NumberSelector,
    NumberSelectorConfig,
    NumberSelectorMode,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
    TextSelector,
)
from homeassistant.helpers.service_info.zeroconf import ZeroconfServiceInfo
from homeassistant.util.network import is_host_valid

from .const import (
    CONF_AREAS,
    CONF_DEVICES,
    CONF_FEDERATION,
    CONF_LABELS,
    CONF_NETFLOW_PORT,
    CONF_NODE_HOST,
    CONF_NODE_PORT,
    CONF_RETENTION_DAYS,
    CONF_SENSITIVITY,
    CONF_ZEEK_PATH,
    DEFAULT_FEDERATION,
    DEFAULT_NODE_PORT,
    DEFAULT_RETENTION_DAYS,
    DEFAULT_SENSITIVITY,
    DOMAIN,
    Sensitivity,
)
from .netflow_listener import async_check_port_free
from .zeek_tail import async_check_readable

PORT_SELECTOR = NumberSelector(
    NumberSelectorConfig(min=1, max=65535, step=1, mode=NumberSelectorMode.BOX)
)


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

    @staticmethod
    @callback
    @override
    def async_get_options_flow(config_entry: ConfigEntry) -> GIoTOptionsFlow:
        """Start the options flow: what to watch, where flows come from, how to learn."""
        return GIoTOptionsFlow()

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

    async def async_step_reconfigure(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Change (or clear) the node address; an empty host means local detection only."""
        entry = self._get_reconfigure_entry()
        errors: dict[str, str] = {}
        if user_input is not None:
            host = str(user_input.get(CONF_NODE_HOST, "")).strip()
            port = int(user_input[CONF_NODE_PORT])
            if not host:
                return self.async_update_reload_and_abort(entry, data={})
            if is_host_valid(host):
                return self.async_update_reload_and_abort(
                    entry, data={CONF_NODE_HOST: host, CONF_NODE_PORT: port}
                )
            errors[CONF_NODE_HOST] = "invalid_host"
        schema = probatio.Schema(
            {
                probatio.Optional(CONF_NODE_HOST): TextSelector(),
                probatio.Required(CONF_NODE_PORT, default=DEFAULT_NODE_PORT): PORT_SELECTOR,
            }
        )
        return self.async_show_form(
            step_id="reconfigure",
            data_schema=self.add_suggested_values_to_schema(schema, user_input or entry.data),
            errors=errors,
        )


class GIoTOptionsFlow(OptionsFlowWithReload):
    """Options; saving them reloads the entry (no update listener)."""

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Ask for watched devices, flow sources (validated), sensitivity, federation, retention."""
        errors: dict[str, str] = {}
        if user_input is not None:
            options = dict(user_input)
            for key in (CONF_NETFLOW_PORT, CONF_RETENTION_DAYS):
                if key in options:
                    options[key] = int(options[key])
            if path := str(options.pop(CONF_ZEEK_PATH, "")).strip():
                options[CONF_ZEEK_PATH] = path
            errors = await self._async_validate(options)
            if not errors:
                return self.async_create_entry(data=options)
        return self.async_show_form(
            step_id="init",
            data_schema=self.add_suggested_values_to_schema(
                _options_schema(), user_input or self.config_entry.options
            ),
            errors=errors,
        )

    async def _async_validate(self, options: dict[str, Any]) -> dict[str, str]:
        errors: dict[str, str] = {}
        port = options.get(CONF_NETFLOW_PORT)
        ours = (
            self.config_entry.state is ConfigEntryState.LOADED
            and self.config_entry.options.get(CONF_NETFLOW_PORT) == port
        )
        if port is not None and not ours and not await async_check_port_free("0.0.0.0", port):
            errors[CONF_NETFLOW_PORT] = "port_in_use"
        path = options.get(CONF_ZEEK_PATH)
        if path is not None and (problem := await async_check_readable(self.hass, path)):
            errors[CONF_ZEEK_PATH] = f"path_{problem}"
        return errors


def _options_schema() -> probatio.Schema:
    return probatio.Schema(
        {
            probatio.Optional(CONF_DEVICES, default=[]): DeviceSelector(
                DeviceSelectorConfig(multiple=True)
            ),
            probatio.Optional(CONF_AREAS, default=[]): AreaSelector(
                AreaSelectorConfig(multiple=True)
            ),
            probatio.Optional(CONF_LABELS, default=[]): LabelSelector(
                LabelSelectorConfig(multiple=True)
            ),
            probatio.Optional(CONF_NETFLOW_PORT): PORT_SELECTOR,
            probatio.Optional(CONF_ZEEK_PATH): TextSelector(),
            probatio.Required(CONF_SENSITIVITY, default=DEFAULT_SENSITIVITY): SelectSelector(
                SelectSelectorConfig(
                    options=[s.value for s in Sensitivity],
                    translation_key=CONF_SENSITIVITY,
                    mode=SelectSelectorMode.LIST,
                )
            ),
            probatio.Required(CONF_FEDERATION, default=DEFAULT_FEDERATION): BooleanSelector(),
            probatio.Required(CONF_RETENTION_DAYS, default=DEFAULT_RETENTION_DAYS): NumberSelector(
                NumberSelectorConfig(min=1, max=365, step=1, mode=NumberSelectorMode.BOX)
            ),
        }
    )
