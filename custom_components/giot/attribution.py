"""Which Home Assistant device a flow belongs to, and which addresses are new on the network.

Home Assistant knows a device's network identity in three places: MAC connections in the device
registry (``CONNECTION_NETWORK_MAC``), the ``ip``/``mac`` attributes of ``device_tracker``
entities (routers, nmap, ping), and the DHCP watcher's MAC-to-address table where that
integration runs. They are folded into one cache (MAC -> device, IP -> device, IP -> MAC), rebuilt
lazily after registry or tracker changes, so a lookup in the flow path is a few dict reads.

A LAN address that none of them knows is announced once as a new device. What was announced is
persisted (Home Assistant's storage helper), so a restart does not announce the home again. IPv6
addresses are only announced through their MAC: privacy addresses rotate and would announce the
same device every day.
"""

import ipaddress
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from homeassistant.const import EVENT_STATE_CHANGED
from homeassistant.core import (
    CALLBACK_TYPE,
    Event,
    EventStateChangedData,
    HomeAssistant,
    callback,
)
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.storage import Store

from giot_engine.records import FlowRecord

from .const import DOMAIN, LOGGER

STORAGE_VERSION = 1
SAVE_DELAY_S = 10.0
DHCP_REFRESH_S = 60.0  # the DHCP table has no public change event: re-read it at most this often
MAX_KNOWN = 4096
TRACKER_DOMAIN = "device_tracker"
_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
DHCP_DATA_KEY = "dhcp"  # hass.data key of the dhcp integration (its table is read, never written)


@dataclass(frozen=True, slots=True)
class NewAddress:
    """An address seen in traffic that no Home Assistant device has (announced once)."""

    key: str  # the MAC where known, else the IPv4 address
    kind: Literal["mac", "ip"]
    ip: str | None
    mac: str | None
    first_seen: float


@dataclass(frozen=True, slots=True)
class Attribution:
    """The Home Assistant devices at the two ends of a flow (None where unknown)."""

    orig_device_id: str | None
    resp_device_id: str | None

    @property
    def device_id(self) -> str | None:
        """The home device the flow is about: the originator, else the responder.

        The originator is the connection's initiator: the decoders turn answers round
        (``giot_engine.flow_join``), so a reply is its initiator's traffic, never the responder's.
        """
        return self.orig_device_id or self.resp_device_id


@dataclass(slots=True)
class AttributionStats:
    """Lookups and what came of them."""

    flows: int = 0
    attributed: int = 0
    new_devices: int = 0
    known_addresses: int = 0
    macs: int = 0
    ips: int = 0
    rebuilds: int = 0


def normalize_mac(value: object) -> str | None:
    """Lower-case colon form of a MAC address, None if it is not one."""
    if not isinstance(value, str):
        return None
    mac = dr.format_mac(value.strip()).lower()
    return mac if _MAC_RE.fullmatch(mac) else None


def _unicast_mac(mac: str) -> bool:
    first = int(mac[:2], 16)
    return not first & 1 and mac != "00:00:00:00:00:00"


@lru_cache(maxsize=4096)
def announceable_ip(address: str) -> bool:
    """Whether an IP can stand for a home device on its own: private unicast IPv4.

    Network and broadcast addresses of the usual /24 (.0, .255) are left out as the subnet is
    unknown here; IPv6 needs a MAC (see module docstring).
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if not isinstance(ip, ipaddress.IPv4Address):
        return False
    if not ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast:
        return False
    return ip.is_unspecified is False and ip.packed[-1] not in (0, 255)


@lru_cache(maxsize=4096)
def is_no_host(address: str) -> bool:
    """Whether an address names no host at all: unspecified (0.0.0.0, ::) or 255.255.255.255.

    A flow "from" such an address is nobody's: a DHCP discover from 0.0.0.0, or a DHCP server's
    broadcast answer turned round onto its destination. It is not the responder's either.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    except ValueError:
        return False
    return ip.is_unspecified or ip == _BROADCAST


@lru_cache(maxsize=4096)
def is_lan_ip(address: str) -> bool:
    """Whether an address can be a host inside the home (private or link-local, any family).

    Multicast, loopback, unspecified (0.0.0.0, ::) and the limited broadcast are nobody's: a DHCP
    server's broadcast answer is turned round onto its destination (``giot_engine.flow_join``),
    and 255.255.255.255 must not become a device.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    except ValueError:
        return False
    if ip.is_multicast or ip.is_loopback or is_no_host(address):
        return False
    return ip.is_private or ip.is_link_local


class DeviceAttributor:
    """Map flow ends to Home Assistant device ids; announce unknown LAN addresses once."""

    def __init__(
        self,
        hass: HomeAssistant,
        on_new_device: Callable[[NewAddress], None] | None = None,
        *,
        storage_key: str = f"{DOMAIN}.known_addresses",
        ignore: Iterable[str] = (),
        max_known: int = MAX_KNOWN,
    ) -> None:
        """Prepare; ``ignore`` lists addresses never to announce (the router, the hub)."""
        self.hass = hass
        self.announce = True  # False: record unknown addresses silently (learning a baseline)
        self.max_known = max_known
        self._on_new_device = on_new_device
        self._store: Store[dict[str, Any]] = Store(hass, STORAGE_VERSION, storage_key, private=True)
        self._ignored: set[str] = set()
        self._known: dict[str, float] = {}
        self._mac_to_device: dict[str, str] = {}
        self._ip_to_device: dict[str, str] = {}
        self._ip_to_mac: dict[str, str] = {}
        self._dhcp_ip_to_mac: dict[str, str] = {}
        self._registry_macs: dict[str, str] = {}  # MAC -> device from the device registry
        self._registry_dirty = True  # a device was added, changed or removed
        self._trackers_dirty = True  # a tracker's state or an entity's device changed
        self._dhcp_read_at = float("-inf")
        self._unsub: list[CALLBACK_TYPE] = []
        self._stats = AttributionStats()
        self.add_ignored(ignore)

    @property
    def stats(self) -> AttributionStats:
        """Counters for diagnostics."""
        self._stats.known_addresses = len(self._known)
        self._stats.macs = len(self._mac_to_device)
        self._stats.ips = len(self._ip_to_device) + len(self._ip_to_mac)
        return self._stats

    @callback
    def add_ignored(self, addresses: Iterable[str]) -> None:
        """Never announce these addresses (IPs or MACs)."""
        for address in addresses:
            self._ignored.add(normalize_mac(address) or address)

    async def async_start(self) -> None:
        """Load what was announced before, build the cache, follow registry and tracker changes."""
        stored = await self._store.async_load()
        known = stored.get("known", {}) if isinstance(stored, Mapping) else {}
        if isinstance(known, Mapping):
            self._known = {str(k): float(v) for k, v in known.items()}
        self._fresh()
        bus = self.hass.bus
        self._unsub += [
            bus.async_listen(dr.EVENT_DEVICE_REGISTRY_UPDATED, self._async_registry_changed),
            bus.async_listen(er.EVENT_ENTITY_REGISTRY_UPDATED, self._async_trackers_changed),
            bus.async_listen(
                EVENT_STATE_CHANGED, self._async_trackers_changed, event_filter=_is_tracker_change
            ),
        ]

    async def async_stop(self) -> None:
        """Stop following changes and write the announced addresses now."""
        while self._unsub:
            self._unsub.pop()()
        await self._store.async_save(self._data())

    @callback
    def _async_registry_changed(self, _event: Event[Any]) -> None:
        self._registry_dirty = True

    @callback
    def _async_trackers_changed(self, _event: Event[Any]) -> None:
        self._trackers_dirty = True

    # -- cache ---------------------------------------------------------------------------------

    def _fold_registry(self) -> None:
        """MACs of the device registry's devices (only a device change calls for this again).

        In a home of 1,500 devices this is the costly part (about 3 ms on the event loop, against
        0.4 ms for the trackers: docs/results/ha_attribution.md), and trackers, which change all
        day (a phone's address), do not need it redone.
        """
        registry_macs: dict[str, str] = {}
        # Oldest device first: where two integrations list the same MAC, the first one wins.
        for device in sorted(dr.async_get(self.hass).devices, key=lambda d: d.created_at):
            for kind, value in device.connections:
                mac = normalize_mac(value) if kind == dr.CONNECTION_NETWORK_MAC else None
                if mac is not None:
                    registry_macs.setdefault(mac, device.id)
        self._registry_macs = registry_macs
        self._registry_dirty = False
        self._trackers_dirty = True

    def _fold_trackers(self) -> None:
        """Tracker states and the DHCP table over the registry's MACs, into the lookup tables."""
        mac_to_device = dict(self._registry_macs)
        ent_reg = er.async_get(self.hass)
        ip_to_device: dict[str, str] = {}
        ip_to_mac: dict[str, str] = {}
        for state in self.hass.states.async_all(TRACKER_DOMAIN):
            ip = state.attributes.get("ip")
            mac = normalize_mac(state.attributes.get("mac"))
            entry = ent_reg.async_get(state.entity_id)
            device_id = entry.device_id if entry is not None else None
            if mac is not None and device_id is not None:
                mac_to_device.setdefault(mac, device_id)
            if not isinstance(ip, str):
                continue
            if mac is not None:
                ip_to_mac[ip] = mac
            if device_id is not None:
                ip_to_device[ip] = device_id
            elif mac is not None and mac in mac_to_device:
                ip_to_device[ip] = mac_to_device[mac]
        self._mac_to_device, self._ip_to_device, self._ip_to_mac = (
            mac_to_device,
            ip_to_device,
            ip_to_mac,
        )
        self._read_dhcp()
        self._trackers_dirty = False
        self._stats.rebuilds += 1

    def _read_dhcp(self) -> None:
        """Read the dhcp integration's MAC -> {ip, hostname} table where it runs."""
        self._dhcp_read_at = time.monotonic()
        table = getattr(self.hass.data.get(DHCP_DATA_KEY), "address_data", None)
        if not isinstance(table, Mapping):
            return
        ip_to_mac: dict[str, str] = {}
        for raw_mac, data in table.items():
            mac = normalize_mac(raw_mac)
            ip = data.get("ip") if isinstance(data, Mapping) else None
            if mac is not None and isinstance(ip, str):
                ip_to_mac[ip] = mac
        self._dhcp_ip_to_mac = ip_to_mac

    def _fresh(self) -> None:
        if self._registry_dirty:
            self._fold_registry()
        if self._trackers_dirty:
            self._fold_trackers()

    def _mac_of(self, ip: str) -> str | None:
        mac = self._ip_to_mac.get(ip) or self._dhcp_ip_to_mac.get(ip)
        if mac is None and time.monotonic() - self._dhcp_read_at >= DHCP_REFRESH_S:
            self._read_dhcp()
            mac = self._dhcp_ip_to_mac.get(ip)
        return mac

    # -- lookups -------------------------------------------------------------------------------

    @callback
    def device_for(self, ip: str | None = None, mac: str | None = None) -> str | None:
        """Find the Home Assistant device id of an address (None where none is known)."""
        self._fresh()
        if (mac := normalize_mac(mac)) is not None and (found := self._mac_to_device.get(mac)):
            return found
        if ip is None:
            return None
        if found := self._ip_to_device.get(ip):
            return found
        known_mac = self._mac_of(ip)
        return self._mac_to_device.get(known_mac) if known_mac is not None else None

    @callback
    def attribute(self, flow: FlowRecord) -> Attribution:
        """Devices at both ends of a flow; unknown LAN ends are announced as new devices."""
        self._stats.flows += 1
        # A MAC only names the originator inside the LAN; on a flow from outside it is the
        # router's own MAC, which must not pull inbound traffic onto the router's device.
        orig_mac = flow.orig_mac if is_lan_ip(flow.orig_h) else None
        orig = self.device_for(flow.orig_h, orig_mac)
        resp = self.device_for(flow.resp_h)
        if orig is None:
            self._check_new(flow.orig_h, orig_mac, flow.ts)
        # A responder counts as present only if it answered: a scan of empty addresses is not a
        # flood of new devices.
        if resp is None and ((flow.resp_pkts or 0) > 0 or (flow.resp_bytes or 0) > 0):
            self._check_new(flow.resp_h, None, flow.ts)
        result = Attribution(orig, resp)
        if result.device_id is not None:
            self._stats.attributed += 1
        return result

    @callback
    def attribute_all(self, flows: Iterable[FlowRecord]) -> list[Attribution]:
        """``attribute`` for a batch, in order."""
        return [self.attribute(flow) for flow in flows]

    # -- new devices ---------------------------------------------------------------------------

    def _check_new(self, ip: str, mac: str | None, ts: float) -> None:
        if not is_lan_ip(ip):
            return
        mac = normalize_mac(mac)
        if mac is not None and not _unicast_mac(mac):
            mac = None
        mac = mac or self._mac_of(ip)
        kind: Literal["mac", "ip"]
        if mac is not None:
            key, kind = mac, "mac"
        elif announceable_ip(ip):
            key, kind = ip, "ip"
        else:
            return
        if key in self._known or key in self._ignored or ip in self._ignored:
            return
        self._known[key] = ts if ts > 0 else time.time()
        self._trim_known()
        self._store.async_delay_save(self._data, SAVE_DELAY_S)
        if not self.announce:
            return
        self._stats.new_devices += 1
        address = NewAddress(
            key=key, kind=kind, ip=ip or None, mac=mac, first_seen=self._known[key]
        )
        LOGGER.info("New device on the network: %s", key)
        if self._on_new_device is not None:
            try:
                self._on_new_device(address)
            except Exception:
                LOGGER.exception("GIoT new-device consumer failed")

    def _trim_known(self) -> None:
        excess = len(self._known) - self.max_known
        if excess > 0:
            for key in sorted(self._known, key=self._known.__getitem__)[:excess]:
                del self._known[key]

    @callback
    def async_forget(self, key: str) -> None:
        """Allow an address to be announced again (e.g. the user removed that device)."""
        if self._known.pop(normalize_mac(key) or key, None) is not None:
            self._store.async_delay_save(self._data, SAVE_DELAY_S)

    def _data(self) -> dict[str, Any]:
        return {"known": dict(self._known)}


@callback
def _is_tracker_change(event_data: EventStateChangedData) -> bool:
    return event_data["entity_id"].startswith(f"{TRACKER_DOMAIN}.")
