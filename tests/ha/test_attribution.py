"""Flows to Home Assistant devices by MAC and IP; unknown LAN addresses announced once, ever."""

from dataclasses import dataclass, field
from typing import Any
from unittest.mock import patch

import pytest
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.giot.attribution import (
    DeviceAttributor,
    NewAddress,
    announceable_ip,
    normalize_mac,
)
from giot_engine.records import FlowRecord


@dataclass
class DhcpTable:
    """Stands for the dhcp integration's data (``DHCPData.address_data``).

    The dhcp integration cannot load in this test environment (its aiodhcpwatcher requirement is
    not installed), so its table is put where it keeps it, in the shape it keeps it.
    """

    address_data: dict[str, dict[str, str]] = field(default_factory=dict)


class Home:
    """A registry with devices known by MAC, by tracker and by DHCP."""

    def __init__(self, hass: HomeAssistant) -> None:
        self.hass = hass
        self.entry = MockConfigEntry(domain="test")
        self.entry.add_to_hass(hass)
        self.dev_reg = dr.async_get(hass)
        self.ent_reg = er.async_get(hass)
        self.camera = self.device("camera", "AA:BB:CC:00:00:01")
        self.phone = self.device("phone")
        self.tv = self.device("tv", "aabbcc000003")
        phone_tracker = self.ent_reg.async_get_or_create(
            "device_tracker",
            "test",
            "phone",
            suggested_object_id="phone",
            config_entry=self.entry,
            device_id=self.phone.id,
        ).entity_id
        hass.states.async_set(
            phone_tracker, "home", {"ip": "192.168.1.30", "mac": "aa:bb:cc:00:00:02"}
        )
        # a tracker without a device entry, but with the camera's MAC (e.g. nmap)
        hass.states.async_set(
            "device_tracker.cam_nmap", "home", {"ip": "192.168.1.40", "mac": "AA-BB-CC-00-00-01"}
        )
        hass.data["dhcp"] = DhcpTable({"aabbcc000003": {"ip": "192.168.1.50", "hostname": "tv"}})

    def device(self, name: str, mac: str | None = None) -> dr.DeviceEntry:
        connections = {(dr.CONNECTION_NETWORK_MAC, mac)} if mac else set()
        return self.dev_reg.async_get_or_create(
            config_entry_id=self.entry.entry_id,
            identifiers={("test", name)},
            connections=connections,
            name=name,
        )


def flow(orig: str, resp: str, **kwargs: Any) -> FlowRecord:
    return FlowRecord(
        ts=1_763_900_000.0,
        orig_h=orig,
        orig_p=50000,
        resp_h=resp,
        resp_p=443,
        proto="tcp",
        **kwargs,
    )


@pytest.fixture
def home(hass: HomeAssistant) -> Home:
    return Home(hass)


def test_address_helpers() -> None:
    assert normalize_mac("AA-BB-CC-DD-EE-FF") == "aa:bb:cc:dd:ee:ff"
    assert normalize_mac("aabbccddeeff") == "aa:bb:cc:dd:ee:ff"
    assert normalize_mac("not a mac") is None
    assert normalize_mac(None) is None
    assert announceable_ip("192.168.1.20")
    assert announceable_ip("10.0.0.7")
    for address in ("8.8.8.8", "192.168.1.255", "224.0.0.251", "127.0.0.1", "fd00::1", "bad"):
        assert not announceable_ip(address), address


async def test_lookup_by_mac_tracker_and_dhcp(hass: HomeAssistant, home: Home) -> None:
    """Each source of network identity leads to the right device."""
    attributor = DeviceAttributor(hass)
    await attributor.async_start()
    assert attributor.device_for(mac="aa:bb:cc:00:00:01") == home.camera.id
    assert attributor.device_for(ip="192.168.1.30") == home.phone.id  # tracker's own device
    assert attributor.device_for(mac="AA:BB:CC:00:00:02") == home.phone.id  # tracker's MAC
    assert attributor.device_for(ip="192.168.1.40") == home.camera.id  # tracker MAC -> registry
    assert attributor.device_for(ip="192.168.1.50") == home.tv.id  # DHCP MAC -> registry
    assert attributor.device_for(ip="192.168.1.99") is None

    outbound = attributor.attribute(flow("192.168.1.30", "93.184.216.34"))
    assert (outbound.orig_device_id, outbound.resp_device_id) == (home.phone.id, None)
    by_mac = attributor.attribute(flow("192.168.1.98", "1.1.1.1", orig_mac="aa:bb:cc:00:00:01"))
    assert by_mac.device_id == home.camera.id
    # inbound: the exporter reports the router's MAC for an outside originator; ignore it
    inbound = attributor.attribute(
        flow("8.8.8.8", "192.168.1.50", orig_mac="aa:bb:cc:00:00:01", resp_pkts=1)
    )
    assert inbound.orig_device_id is None
    assert inbound.device_id == home.tv.id
    assert attributor.stats.attributed == 3
    await attributor.async_stop()


async def test_cache_follows_registry_and_trackers(hass: HomeAssistant, home: Home) -> None:
    """A device or tracker added after start is found without restarting."""
    attributor = DeviceAttributor(hass)
    await attributor.async_start()
    assert attributor.device_for(mac="aa:bb:cc:00:00:09") is None
    plug = home.device("plug", "aa:bb:cc:00:00:09")
    await hass.async_block_till_done()
    assert attributor.device_for(mac="aa:bb:cc:00:00:09") == plug.id

    hass.states.async_set(
        "device_tracker.plug", "home", {"ip": "192.168.1.60", "mac": "aa:bb:cc:00:00:09"}
    )
    await hass.async_block_till_done()
    assert attributor.device_for(ip="192.168.1.60") == plug.id
    rebuilds = attributor.stats.rebuilds
    attributor.device_for(ip="192.168.1.60")
    assert attributor.stats.rebuilds == rebuilds  # no change, no rebuild
    await attributor.async_stop()


async def test_tracker_moves_leave_the_device_registry_alone(
    hass: HomeAssistant, home: Home
) -> None:
    """A tracker's new address refreshes the trackers only; a new device refolds the registry.

    Trackers change all day (phones); a pass over a thousand devices on the event loop each time
    would cost milliseconds.
    """
    attributor = DeviceAttributor(hass)
    await attributor.async_start()
    with patch.object(attributor, "_fold_registry", wraps=attributor._fold_registry) as fold:
        hass.states.async_set(
            "device_tracker.cam_nmap", "home", {"ip": "192.168.1.41", "mac": "AA-BB-CC-00-00-01"}
        )
        await hass.async_block_till_done()
        assert attributor.device_for(ip="192.168.1.41") == home.camera.id
        assert attributor.device_for(ip="192.168.1.40") is None  # its old address
        assert fold.call_count == 0
        plug = home.device("plug", "aa:bb:cc:00:00:09")
        await hass.async_block_till_done()
        assert attributor.device_for(mac="aa:bb:cc:00:00:09") == plug.id
        assert fold.call_count == 1
    await attributor.async_stop()


async def test_new_device_announced_once_across_restarts(hass: HomeAssistant, home: Home) -> None:
    """Unknown LAN addresses are announced once, and not again after a restart."""
    announced: list[NewAddress] = []
    attributor = DeviceAttributor(hass, announced.append, ignore=["192.168.1.1"])
    await attributor.async_start()

    attributor.attribute(flow("192.168.1.77", "93.184.216.34"))
    attributor.attribute(flow("192.168.1.77", "93.184.216.35"))
    attributor.attribute(flow("192.168.1.78", "93.184.216.34", orig_mac="DE:AD:BE:EF:00:01"))
    attributor.attribute(flow("192.168.1.1", "93.184.216.34"))  # the router: ignored
    attributor.attribute(flow("8.8.8.8", "192.168.1.30", resp_pkts=1))  # outside: no device
    attributor.attribute(flow("192.168.1.30", "192.168.1.201"))  # scanned, never answered
    attributor.attribute(flow("192.168.1.30", "192.168.1.202", resp_bytes=60))  # answered
    attributor.attribute(flow("192.168.1.30", "224.0.0.251"))  # multicast
    attributor.attribute(flow("fe80::1234", "ff02::fb"))  # IPv6 without MAC
    assert [(a.key, a.kind) for a in announced] == [
        ("192.168.1.77", "ip"),
        ("de:ad:be:ef:00:01", "mac"),
        ("192.168.1.202", "ip"),
    ]
    assert announced[1].ip == "192.168.1.78"
    assert announced[0].first_seen == 1_763_900_000.0
    assert attributor.stats.new_devices == 3
    await attributor.async_stop()

    again: list[NewAddress] = []
    restarted = DeviceAttributor(hass, again.append)
    await restarted.async_start()
    restarted.attribute(flow("192.168.1.77", "93.184.216.34"))
    restarted.attribute(flow("192.168.1.79", "93.184.216.34", orig_mac="de:ad:be:ef:00:01"))
    assert again == []  # the MAC was announced before, whatever address it has now
    restarted.attribute(flow("192.168.1.80", "93.184.216.34"))
    assert [a.key for a in again] == ["192.168.1.80"]

    restarted.async_forget("192.168.1.77")
    restarted.attribute(flow("192.168.1.77", "93.184.216.34"))
    assert [a.key for a in again] == ["192.168.1.80", "192.168.1.77"]
    await restarted.async_stop()


async def test_learning_mode_and_bound(hass: HomeAssistant, home: Home) -> None:
    """With announcing off, addresses are recorded silently; the record is bounded."""
    announced: list[NewAddress] = []
    attributor = DeviceAttributor(hass, announced.append, max_known=2)
    await attributor.async_start()
    attributor.announce = False
    for host in (11, 12, 13):
        attributor.attribute(flow(f"192.168.1.{host}", "93.184.216.34"))
    assert announced == []
    assert attributor.stats.known_addresses == 2
    attributor.announce = True
    attributor.attribute(flow("192.168.1.13", "93.184.216.34"))  # recorded: silent
    attributor.attribute(flow("192.168.1.11", "93.184.216.34"))  # dropped from the record
    assert [a.key for a in announced] == ["192.168.1.11"]
    await attributor.async_stop()
