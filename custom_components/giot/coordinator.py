"""Runtime state of a GIoT config entry."""

from dataclasses import dataclass

from homeassistant.config_entries import ConfigEntry

from .const import CONF_NODE_HOST, CONF_NODE_PORT

type GIoTConfigEntry = ConfigEntry[GIoTRuntimeData]


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where the GIoT node (the Flower SuperNode beside Home Assistant) listens."""

    host: str
    port: int


@dataclass(slots=True)
class GIoTRuntimeData:
    """What a loaded entry holds; it lives exactly as long as the entry is loaded."""

    node: NodeAddress | None

    @classmethod
    def from_entry(cls, entry: ConfigEntry) -> GIoTRuntimeData:
        """Read the entry's data: without a node, detection still runs locally."""
        host = entry.data.get(CONF_NODE_HOST)
        port = entry.data.get(CONF_NODE_PORT)
        node = NodeAddress(host, int(port)) if host and port else None
        return cls(node=node)
