"""Config flow for GIoT: one entry per Home Assistant, paired with a GIoT node or not.

Detection needs nothing outside Home Assistant, so the user step may leave the node empty.
Pairing a node (found by zeroconf, or entered by hand) takes the pairing token that
``giot-node pair`` prints and checks it by shaking hands with the node; the entry's unique id is
then the node's id. Pairing turns federated training on, unless the options hold an explicit
"off". A token the node later refuses starts the reauthentication step.
"""

from collections.abc import Mapping
from typing import Any, override

import probatio
from homeassistant.config_entries import (
    SOURCE_IGNORE,
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
    TextSelectorConfig,
    TextSelectorType,
)
from homeassistant.helpers.service_info.zeroconf import ZeroconfServiceInfo
from homeassistant.util.network import is_host_valid

from giot_engine.node_protocol import normalise_token

from .const import (
    CONF_AREAS,
    CONF_DEVICES,
    CONF_FEDERATION,
    CONF_LABELS,
    CONF_NETFLOW_PORT,
    CONF_NODE_HOST,
    CONF_NODE_PORT,
    CONF_NODE_TOKEN,
    CONF_RETENTION_DAYS,
    CONF_SENSITIVITY,
    CONF_SERVER_KEY,
    CONF_ZEEK_PATH,
    DEFAULT_FEDERATION,
    DEFAULT_NODE_PORT,
    DEFAULT_RETENTION_DAYS,
    DEFAULT_SENSITIVITY,
    DOMAIN,
    LOGGER,
    Sensitivity,
)
from .models import node_from_entry
from .netflow_listener import async_check_port_free
from .node_link import (
    NodeAuthError,
    NodeHello,
    NodeIncompatibleError,
    NodeUnreachableError,
    async_check_node,
)
from .zeek_tail import async_check_readable

TITLE = "GIoT"
PORT_SELECTOR = NumberSelector(
    NumberSelectorConfig(min=1, max=65535, step=1, mode=NumberSelectorMode.BOX)
)
TOKEN_SELECTOR = TextSelector(TextSelectorConfig(type=TextSelectorType.PASSWORD))
NODE_SCHEMA = probatio.Schema(
    {
        probatio.Optional(CONF_NODE_HOST): TextSelector(),
        probatio.Required(CONF_NODE_PORT, default=DEFAULT_NODE_PORT): PORT_SELECTOR,
        probatio.Optional(CONF_NODE_TOKEN): TOKEN_SELECTOR,
    }
)
TOKEN_SCHEMA = probatio.Schema({probatio.Required(CONF_NODE_TOKEN): TOKEN_SELECTOR})


def _node_data(host: str, port: int, token: str, hello: NodeHello) -> dict[str, Any]:
    """Entry data of a paired node: where it is, its token, and the server's key it named."""
    data: dict[str, Any] = {CONF_NODE_HOST: host, CONF_NODE_PORT: port, CONF_NODE_TOKEN: token}
    return data | _server_key(hello)


def _server_key(hello: NodeHello) -> dict[str, Any]:
    """Keep the server's model-signing key, learnt here at pairing (none: the node had none)."""
    return {CONF_SERVER_KEY: hello.server_key} if hello.server_key else {}


def _federation_on(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options of a newly paired entry: federation on, unless the user turned it off."""
    return {**options, CONF_FEDERATION: options.get(CONF_FEDERATION, True)}


class GIoTConfigFlow(ConfigFlow, domain=DOMAIN):
    """Create the single GIoT entry, pair it with a node, or give it a new token.

    One entry per Home Assistant: the user step refuses a second one; a discovered node
    either updates the entry it is paired with (a new address), or pairs the entry that has no
    node yet, or creates the entry.
    """

    VERSION = 1

    def __init__(self) -> None:
        """Start with no discovered node."""
        self._host = ""
        self._port = DEFAULT_NODE_PORT

    @staticmethod
    @callback
    @override
    def async_get_options_flow(config_entry: ConfigEntry) -> GIoTOptionsFlow:
        """Start the options flow: what to watch, where flows come from, how to learn."""
        return GIoTOptionsFlow()

    async def _async_pair(
        self, host: str, port: int, token: str
    ) -> tuple[NodeHello | None, dict[str, str]]:
        """Shake hands with the node at host:port with ``token``; say what went wrong."""
        if not is_host_valid(host):
            return None, {CONF_NODE_HOST: "invalid_host"}
        if not normalise_token(token):
            return None, {CONF_NODE_TOKEN: "token_required"}
        error = "unknown"
        try:
            return await async_check_node(self.hass, host, port, token), {}
        except NodeAuthError:
            error = "invalid_auth"
        except NodeIncompatibleError:
            error = "incompatible"
        except NodeUnreachableError:
            error = "cannot_connect"
        except Exception:
            LOGGER.exception("Unexpected error while pairing with the GIoT node")
        return None, {"base": error}

    async def _async_free_unique_id(self, node_id: str) -> None:
        """Remove an ignored discovery of the node being paired (one entry per unique id)."""
        for entry in self.hass.config_entries.async_entries(DOMAIN, include_ignore=True):
            if entry.source == SOURCE_IGNORE and entry.unique_id == node_id:
                await self.hass.config_entries.async_remove(entry.entry_id)

    @override
    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Set GIoT up, with a node (host, port, token) or without (empty host)."""
        if self._async_current_entries():
            return self.async_abort(reason="single_instance_allowed")
        errors: dict[str, str] = {}
        if user_input is not None:
            host = str(user_input.get(CONF_NODE_HOST, "")).strip()
            port = int(user_input[CONF_NODE_PORT])
            token = str(user_input.get(CONF_NODE_TOKEN, ""))
            if not host:
                return self.async_create_entry(title=TITLE, data={})
            hello, errors = await self._async_pair(host, port, token)
            if hello is not None:
                await self.async_set_unique_id(hello.node_id)
                self._abort_if_unique_id_configured()
                return self.async_create_entry(
                    title=TITLE,
                    data=_node_data(host, port, token, hello),
                    options=_federation_on({}),
                )
        return self.async_show_form(
            step_id="user",
            data_schema=self.add_suggested_values_to_schema(NODE_SCHEMA, user_input),
            errors=errors,
        )

    async def async_step_zeroconf(self, discovery_info: ZeroconfServiceInfo) -> ConfigFlowResult:
        """Offer a GIoT node announced on the local network (TXT ``id`` is its node id)."""
        node_id = discovery_info.properties.get("id")
        if not node_id:
            return self.async_abort(reason="invalid_discovery_info")
        self._host = discovery_info.host
        self._port = discovery_info.port or DEFAULT_NODE_PORT
        await self.async_set_unique_id(node_id)
        # the paired entry follows its node to a new address (and reloads)
        self._abort_if_unique_id_configured(
            updates={CONF_NODE_HOST: self._host, CONF_NODE_PORT: self._port}
        )
        entries = self._async_current_entries(include_ignore=False)
        if entries and node_from_entry(entries[0]) is not None:
            return self.async_abort(reason="already_paired")
        self.context["title_placeholders"] = {"name": discovery_info.name.split(".")[0]}
        return await self.async_step_pair()

    async def async_step_pair(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Ask for the discovered node's pairing token and check it."""
        errors: dict[str, str] = {}
        if user_input is not None:
            token = str(user_input[CONF_NODE_TOKEN])
            hello, errors = await self._async_pair(self._host, self._port, token)
            if hello is not None:
                if hello.node_id != self.unique_id:  # not the node that was announced
                    return self.async_abort(reason="invalid_discovery_info")
                data = _node_data(self._host, self._port, token, hello)
                if entries := self._async_current_entries(include_ignore=False):
                    return self.async_update_reload_and_abort(
                        entries[0],
                        unique_id=hello.node_id,
                        data=data,
                        options=_federation_on(entries[0].options),
                        reason="paired",
                    )
                return self.async_create_entry(title=TITLE, data=data, options=_federation_on({}))
        return self.async_show_form(
            step_id="pair",
            data_schema=TOKEN_SCHEMA,
            errors=errors,
            description_placeholders={"host": f"{self._host}:{self._port}"},
        )

    async def async_step_reconfigure(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Pair with a node, move it, or unpair (empty host: local detection only).

        An empty token keeps the stored one (the same node at a new address).
        """
        entry = self._get_reconfigure_entry()
        errors: dict[str, str] = {}
        if user_input is not None:
            host = str(user_input.get(CONF_NODE_HOST, "")).strip()
            port = int(user_input[CONF_NODE_PORT])
            token = str(user_input.get(CONF_NODE_TOKEN) or entry.data.get(CONF_NODE_TOKEN, ""))
            if not host:
                return self.async_update_reload_and_abort(entry, unique_id=None, data={})
            hello, errors = await self._async_pair(host, port, token)
            if hello is not None:
                await self._async_free_unique_id(hello.node_id)
                return self.async_update_reload_and_abort(
                    entry,
                    unique_id=hello.node_id,
                    data=_node_data(host, port, token, hello),
                    options=_federation_on(entry.options),
                )
        suggested = {k: v for k, v in (user_input or entry.data).items() if k != CONF_NODE_TOKEN}
        return self.async_show_form(
            step_id="reconfigure",
            data_schema=self.add_suggested_values_to_schema(NODE_SCHEMA, suggested),
            errors=errors,
        )

    async def async_step_reauth(self, entry_data: Mapping[str, Any]) -> ConfigFlowResult:
        """Ask for a new token: the node refused the old one (or the entry has none yet)."""
        return await self.async_step_reauth_confirm()

    async def async_step_reauth_confirm(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Check the new token against the same node, keep it and reload."""
        entry = self._get_reauth_entry()
        host = str(entry.data.get(CONF_NODE_HOST, ""))
        port = int(entry.data.get(CONF_NODE_PORT, DEFAULT_NODE_PORT))
        errors: dict[str, str] = {}
        if user_input is not None:
            token = str(user_input[CONF_NODE_TOKEN])
            hello, errors = await self._async_pair(host, port, token)
            if hello is not None:
                if entry.unique_id not in (None, hello.node_id):
                    return self.async_abort(reason="unique_id_mismatch")
                return self.async_update_reload_and_abort(
                    entry,
                    unique_id=hello.node_id,
                    data_updates={CONF_NODE_TOKEN: token, **_server_key(hello)},
                )
        return self.async_show_form(
            step_id="reauth_confirm",
            data_schema=TOKEN_SCHEMA,
            errors=errors,
            description_placeholders={"host": f"{host}:{port}"},
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
            if (
                node_from_entry(self.config_entry) is None
                and options.get(CONF_FEDERATION) is DEFAULT_FEDERATION
            ):
                # Left at the default before pairing is no choice: pairing may turn it on.
                del options[CONF_FEDERATION]
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
