"""Every path of the GIoT config flow, pairing against a real WebSocket server as the node."""

from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from homeassistant.config_entries import SOURCE_IGNORE, SOURCE_USER, SOURCE_ZEROCONF
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers.service_info.zeroconf import ZeroconfServiceInfo
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.giot.const import (
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
    CONF_ZEEK_PATH,
    DOMAIN,
)

from .fake_node import NODE_ID, TOKEN, FakeNode

FLOW = "custom_components.giot.config_flow"
COORDINATOR = "custom_components.giot.coordinator"
HOST = "127.0.0.1"


def discovery(port: int, node_id: str | None = NODE_ID, host: str = HOST) -> ZeroconfServiceInfo:
    """What zeroconf hands over for a node announcing ``_giot._tcp.local.``."""
    return ZeroconfServiceInfo(
        ip_address=ip_address(host),
        ip_addresses=[ip_address(host)],
        hostname="giot-node.local.",
        name="giot-node._giot._tcp.local.",
        port=port,
        properties={"proto": "1"} | ({"id": node_id} if node_id else {}),
        type="_giot._tcp.local.",
    )


def paired(port: int, token: str = TOKEN) -> dict[str, Any]:
    """Entry data of a node paired on 127.0.0.1:port."""
    return {CONF_NODE_HOST: HOST, CONF_NODE_PORT: port, CONF_NODE_TOKEN: token}


@pytest.mark.usefixtures("mock_setup_entry")
async def test_user_step_without_node(hass: HomeAssistant) -> None:
    """An empty host creates an entry for local detection only."""
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "user"

    result = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == "GIoT"
    assert result["data"] == {}
    assert result["options"] == {}
    assert result["result"].unique_id is None


@pytest.mark.usefixtures("mock_setup_entry")
async def test_user_step_pairs_a_node(hass: HomeAssistant, fake_node: FakeNode) -> None:
    """Host, port and token are checked by shaking hands; federation turns on."""
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {
            CONF_NODE_HOST: f" {HOST} ",
            CONF_NODE_PORT: float(fake_node.port),
            CONF_NODE_TOKEN: TOKEN,
        },
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["data"] == paired(fake_node.port)
    assert result["options"] == {CONF_FEDERATION: True}
    assert result["result"].unique_id == NODE_ID
    assert fake_node.auths[0]["hub"] == hass.config.location_name


async def _incompatible_node() -> FakeNode:
    node = FakeNode(protocols=[2])
    await node.start()
    return node


@pytest.mark.usefixtures("mock_setup_entry", "socket_enabled")
@pytest.mark.parametrize(
    ("credentials", "incompatible", "error"),
    [
        (("not a host!", TOKEN), False, {CONF_NODE_HOST: "invalid_host"}),
        ((HOST, " - "), False, {CONF_NODE_TOKEN: "token_required"}),
        ((HOST, "wrong-token"), False, {"base": "invalid_auth"}),
        ((HOST, TOKEN), True, {"base": "incompatible"}),
    ],
)
async def test_user_step_errors(
    hass: HomeAssistant,
    fake_node: FakeNode,
    credentials: tuple[str, str],
    incompatible: bool,
    error: dict[str, str],
) -> None:
    """Each way pairing fails is shown on the form, and the user can try again."""
    host, token = credentials
    node = await _incompatible_node() if incompatible else fake_node
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {CONF_NODE_HOST: host, CONF_NODE_PORT: node.port, CONF_NODE_TOKEN: token},
    )
    if incompatible:
        await node.stop()
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == error

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {CONF_NODE_HOST: HOST, CONF_NODE_PORT: fake_node.port, CONF_NODE_TOKEN: TOKEN},
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY


@pytest.mark.usefixtures("mock_setup_entry", "socket_enabled")
async def test_user_step_cannot_connect_and_unknown(
    hass: HomeAssistant, unused_tcp_port: int
) -> None:
    """Nothing listening is cannot_connect; anything unexpected is unknown (and logged)."""
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    user_input = {CONF_NODE_HOST: HOST, CONF_NODE_PORT: unused_tcp_port, CONF_NODE_TOKEN: TOKEN}
    result = await hass.config_entries.flow.async_configure(result["flow_id"], user_input)
    assert result["errors"] == {"base": "cannot_connect"}
    with patch(f"{FLOW}.async_check_node", side_effect=RuntimeError("boom")):
        result = await hass.config_entries.flow.async_configure(result["flow_id"], user_input)
    assert result["errors"] == {"base": "unknown"}


@pytest.mark.parametrize("source", [SOURCE_USER, SOURCE_ZEROCONF])
async def test_single_instance(
    hass: HomeAssistant, mock_config_entry: MockConfigEntry, source: str
) -> None:
    """A second entry is refused: by hand outright, by discovery once paired to another node."""
    MockConfigEntry(domain=DOMAIN, data=paired(9093), unique_id="other-node").add_to_hass(hass)
    result = await hass.config_entries.flow.async_init(
        DOMAIN,
        context={"source": source},
        data=discovery(9093) if source == SOURCE_ZEROCONF else None,
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == (
        "single_instance_allowed" if source == SOURCE_USER else "already_paired"
    )


async def test_zeroconf_needs_the_node_id(hass: HomeAssistant) -> None:
    """An announcement without TXT ``id`` cannot be paired."""
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_ZEROCONF}, data=discovery(9093, node_id=None)
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "invalid_discovery_info"


@pytest.mark.usefixtures("mock_setup_entry")
async def test_zeroconf_pairs_and_creates_entry(hass: HomeAssistant, fake_node: FakeNode) -> None:
    """A discovered node asks for its token (a wrong one is refused), then creates the entry."""
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_ZEROCONF}, data=discovery(fake_node.port)
    )
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "pair"
    assert result["description_placeholders"] == {"host": f"{HOST}:{fake_node.port}"}
    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert flows[0]["context"]["title_placeholders"] == {"name": "giot-node"}

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_NODE_TOKEN: "wrong"}
    )
    assert result["errors"] == {"base": "invalid_auth"}
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {CONF_NODE_TOKEN: TOKEN.upper()},  # case and dashes do not matter
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["data"] == paired(fake_node.port, TOKEN.upper())
    assert result["options"] == {CONF_FEDERATION: True}
    assert result["result"].unique_id == NODE_ID


@pytest.mark.usefixtures("mock_setup_entry")
@pytest.mark.parametrize(
    ("options", "federation"),
    [({}, True), ({CONF_FEDERATION: False}, False)],
)
async def test_zeroconf_pairs_the_unpaired_entry(
    hass: HomeAssistant, fake_node: FakeNode, options: dict[str, Any], federation: bool
) -> None:
    """GIoT set up without a node is paired in place; an explicit "off" stays off."""
    mock_config_entry = MockConfigEntry(domain=DOMAIN, title="GIoT", data={}, options=options)
    mock_config_entry.add_to_hass(hass)
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_ZEROCONF}, data=discovery(fake_node.port)
    )
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_NODE_TOKEN: TOKEN}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "paired"
    assert mock_config_entry.data == paired(fake_node.port)
    assert mock_config_entry.unique_id == NODE_ID
    assert mock_config_entry.options == {CONF_FEDERATION: federation}


@pytest.mark.usefixtures("mock_setup_entry")
async def test_zeroconf_another_node_answers(hass: HomeAssistant, fake_node: FakeNode) -> None:
    """The node that answers at the announced address must be the one announced."""
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_ZEROCONF}, data=discovery(fake_node.port, "node-x")
    )
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_NODE_TOKEN: TOKEN}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "invalid_discovery_info"


@pytest.mark.usefixtures("mock_setup_entry")
async def test_zeroconf_updates_the_paired_node_address(hass: HomeAssistant) -> None:
    """The paired node, rediscovered at a new address, updates the entry."""
    entry = MockConfigEntry(domain=DOMAIN, data=paired(9093), unique_id=NODE_ID)
    entry.add_to_hass(hass)
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_ZEROCONF}, data=discovery(9094, host="192.0.2.20")
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "already_configured"
    assert entry.data == {
        CONF_NODE_HOST: "192.0.2.20",
        CONF_NODE_PORT: 9094,
        CONF_NODE_TOKEN: TOKEN,
    }


@pytest.mark.usefixtures("mock_setup_entry")
async def test_reconfigure(
    hass: HomeAssistant, mock_config_entry: MockConfigEntry, fake_node: FakeNode
) -> None:
    """Reconfigure pairs a node (checked), keeps the token when moving it, and unpairs."""
    mock_config_entry.add_to_hass(hass)
    ignored = MockConfigEntry(domain=DOMAIN, source=SOURCE_IGNORE, unique_id=NODE_ID)
    ignored.add_to_hass(hass)
    result = await mock_config_entry.start_reconfigure_flow(hass)
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "reconfigure"

    node_input = {CONF_NODE_HOST: HOST, CONF_NODE_PORT: fake_node.port}
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {**node_input, CONF_NODE_TOKEN: "wrong"}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"base": "invalid_auth"}
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {**node_input, CONF_NODE_TOKEN: TOKEN}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    assert mock_config_entry.data == paired(fake_node.port)
    assert mock_config_entry.unique_id == NODE_ID
    assert mock_config_entry.options == {CONF_FEDERATION: True}
    assert hass.config_entries.async_get_entry(ignored.entry_id) is None  # its id is taken

    # the same node again (a new address in real life): an empty token keeps the stored one
    result = await mock_config_entry.start_reconfigure_flow(hass)
    suggested = {
        key.schema: key.description["suggested_value"]
        for key in result["data_schema"].schema
        if key.description
    }
    assert suggested == {CONF_NODE_HOST: HOST, CONF_NODE_PORT: fake_node.port}  # no token
    result = await hass.config_entries.flow.async_configure(result["flow_id"], node_input)
    assert result["reason"] == "reconfigure_successful"
    assert mock_config_entry.data == paired(fake_node.port)

    result = await mock_config_entry.start_reconfigure_flow(hass)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_NODE_HOST: "  ", CONF_NODE_PORT: 9093}
    )
    assert result["type"] is FlowResultType.ABORT
    assert mock_config_entry.data == {}
    assert mock_config_entry.unique_id is None
    assert mock_config_entry.options == {CONF_FEDERATION: True}  # it stays the user's choice


@pytest.mark.usefixtures("mock_setup_entry")
async def test_reauth(hass: HomeAssistant, fake_node: FakeNode) -> None:
    """A new token for the same node, checked, saved, and the entry reloaded."""
    entry = MockConfigEntry(domain=DOMAIN, data=paired(fake_node.port, "old"), unique_id=NODE_ID)
    entry.add_to_hass(hass)
    result = await entry.start_reauth_flow(hass)
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "reauth_confirm"
    assert result["description_placeholders"]["host"] == f"{HOST}:{fake_node.port}"

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_NODE_TOKEN: "still-wrong"}
    )
    assert result["errors"] == {"base": "invalid_auth"}
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_NODE_TOKEN: TOKEN}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reauth_successful"
    assert entry.data == paired(fake_node.port)


@pytest.mark.usefixtures("mock_setup_entry")
@pytest.mark.parametrize(
    ("unique_id", "reason"), [("other-node", "unique_id_mismatch"), (None, "reauth_successful")]
)
async def test_reauth_checks_the_node(
    hass: HomeAssistant, fake_node: FakeNode, unique_id: str | None, reason: str
) -> None:
    """Another node's token is refused; an entry from before pairing learns its node id."""
    entry = MockConfigEntry(domain=DOMAIN, data=paired(fake_node.port, ""), unique_id=unique_id)
    entry.add_to_hass(hass)
    result = await entry.start_reauth_flow(hass)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_NODE_TOKEN: TOKEN}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == reason
    if unique_id is None:
        assert entry.unique_id == NODE_ID


OPTIONS_INPUT = {
    CONF_DEVICES: ["device-1"],
    CONF_AREAS: ["kitchen"],
    CONF_LABELS: [],
    CONF_NETFLOW_PORT: 2055.0,
    CONF_ZEEK_PATH: "  ",
    CONF_SENSITIVITY: "high",
    CONF_FEDERATION: False,
    CONF_RETENTION_DAYS: 14.0,
}


@pytest.mark.usefixtures("mock_setup_entry")
async def test_options_flow(hass: HomeAssistant, mock_config_entry: MockConfigEntry) -> None:
    """Options are cleaned (numbers to int, a blank path dropped) after the port is checked."""
    mock_config_entry.add_to_hass(hass)
    result = await hass.config_entries.options.async_init(mock_config_entry.entry_id)
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "init"

    with patch(f"{FLOW}.async_check_port_free", return_value=True) as check:
        result = await hass.config_entries.options.async_configure(result["flow_id"], OPTIONS_INPUT)
    check.assert_awaited_once_with("0.0.0.0", 2055)
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert mock_config_entry.options == {
        CONF_DEVICES: ["device-1"],
        CONF_AREAS: ["kitchen"],
        CONF_LABELS: [],
        CONF_NETFLOW_PORT: 2055,
        CONF_SENSITIVITY: "high",
        CONF_RETENTION_DAYS: 14,  # federation left at its default before pairing: no choice
    }


@pytest.mark.usefixtures("mock_setup_entry")
async def test_options_flow_keeps_federation_off_once_paired(hass: HomeAssistant) -> None:
    """With a node paired, turning federation off is a choice, and kept."""
    entry = MockConfigEntry(domain=DOMAIN, data=paired(9093), options={CONF_FEDERATION: True})
    entry.add_to_hass(hass)
    result = await hass.config_entries.options.async_init(entry.entry_id)
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], {CONF_SENSITIVITY: "medium", CONF_FEDERATION: False}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert entry.options[CONF_FEDERATION] is False


@pytest.mark.usefixtures("mock_setup_entry")
async def test_options_flow_port_in_use(
    hass: HomeAssistant, mock_config_entry: MockConfigEntry
) -> None:
    """A NetFlow port something else holds is refused with a translated error."""
    mock_config_entry.add_to_hass(hass)
    result = await hass.config_entries.options.async_init(mock_config_entry.entry_id)
    with patch(f"{FLOW}.async_check_port_free", return_value=False):
        result = await hass.config_entries.options.async_configure(result["flow_id"], OPTIONS_INPUT)
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_NETFLOW_PORT: "port_in_use"}

    without_port = {k: v for k, v in OPTIONS_INPUT.items() if k != CONF_NETFLOW_PORT}
    result = await hass.config_entries.options.async_configure(result["flow_id"], without_port)
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert CONF_NETFLOW_PORT not in mock_config_entry.options


@pytest.mark.usefixtures("mock_setup_entry")
@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda tmp: tmp / "missing.log", "path_not_found"),
        (lambda tmp: tmp, "path_not_a_file"),
    ],
)
async def test_options_flow_zeek_path(
    hass: HomeAssistant,
    mock_config_entry: MockConfigEntry,
    tmp_path: Path,
    make: Callable[[Path], Path],
    error: str,
) -> None:
    """An unusable conn.log path is refused; a readable one is kept."""
    mock_config_entry.add_to_hass(hass)
    result = await hass.config_entries.options.async_init(mock_config_entry.entry_id)
    user_input = {CONF_ZEEK_PATH: str(make(tmp_path)), CONF_SENSITIVITY: "medium"}
    result = await hass.config_entries.options.async_configure(result["flow_id"], user_input)
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_ZEEK_PATH: error}

    log = tmp_path / "conn.log"
    log.write_text("#separator \\x09\n")
    user_input[CONF_ZEEK_PATH] = str(log)
    result = await hass.config_entries.options.async_configure(result["flow_id"], user_input)
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert mock_config_entry.options[CONF_ZEEK_PATH] == str(log)


async def test_options_flow_keeps_own_port(hass: HomeAssistant) -> None:
    """The port GIoT itself listens on is not reported as taken, and saving reloads the entry."""
    entry = MockConfigEntry(domain=DOMAIN, options={CONF_NETFLOW_PORT: 2055})
    entry.add_to_hass(hass)
    with (
        patch(f"{COORDINATOR}.NetFlowListener.async_start"),
        patch(f"{COORDINATOR}.NetFlowListener.async_stop"),
        patch(f"{FLOW}.async_check_port_free", return_value=False) as check,
    ):
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
        result = await hass.config_entries.options.async_init(entry.entry_id)
        result = await hass.config_entries.options.async_configure(
            result["flow_id"], {CONF_NETFLOW_PORT: 2055, CONF_SENSITIVITY: "low"}
        )
        await hass.async_block_till_done()
    assert result["type"] is FlowResultType.CREATE_ENTRY
    check.assert_not_called()
    assert entry.runtime_data.coordinator.sensitivity == "low"
