"""A home's traffic for the end-to-end federation tests: its devices, NetFlow and state changes.

Each home has its own address plan, MAC addresses, host names and entities, so that the test can
search every byte a node sent to the server for anything that would identify either home
(``Home.secrets``). Flows go to Home Assistant as real NetFlow v9 datagrams over UDP; state
changes through Home Assistant's REST API, as a device integration would cause them.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from giot_engine.records import FlowRecord
from tests.engine.netflow_packets import build_v9


@dataclass(frozen=True)
class Device:
    """One device of a home: address, MAC, name and the services it talks to."""

    ip: str
    mac: str
    hostname: str
    services: tuple[tuple[str, int, str], ...]  # (remote ip, port, proto)


@dataclass
class Home:
    """A home with ``devices``, a Home Assistant entity per device, and a clock."""

    name: str
    subnet: str  # "192.168.77" (a /24 of its own)
    seed: int
    devices: list[Device] = field(default_factory=list)
    start: float = 1_790_000_000.0

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        remote = [
            f"{rng.randint(11, 199)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{i}"
            for i in range(1, 7)
        ]
        for i in range(4):
            services = tuple(
                (rng.choice(remote), port, proto)
                for port, proto in rng.sample(
                    [(443, "tcp"), (123, "udp"), (8883, "tcp"), (53, "udp"), (80, "tcp")], 3
                )
            )
            octets = [self.seed & 0xFF, *(rng.randrange(256) for _ in range(4))]
            mac = "02:" + ":".join(f"{o:02x}" for o in octets)
            self.devices.append(
                Device(f"{self.subnet}.{20 + i}", mac, f"{self.name}-gadget-{i}", services)
            )

    @property
    def entities(self) -> list[str]:
        """One sensor per device, named after the home (never seen by the other)."""
        return [f"sensor.{self.name}_gadget_{i}_power" for i in range(len(self.devices))]

    def flows(self, minutes: int) -> Iterator[tuple[float, list[FlowRecord]]]:
        """Minute by minute: each device calls its services every few seconds."""
        rng = random.Random(self.seed + 1)
        for minute in range(minutes):
            t0 = self.start + 60 * minute
            batch = []
            for dev in self.devices:
                for k in range(4):
                    remote, port, proto = dev.services[k % len(dev.services)]
                    batch.append(
                        FlowRecord(
                            ts=t0 + 15 * k + rng.random(),
                            orig_h=dev.ip,
                            orig_p=rng.randint(32768, 60999),
                            resp_h=remote,
                            resp_p=port,
                            proto=proto,
                            duration=round(rng.uniform(0.01, 2.0), 3),
                            orig_bytes=rng.randint(200, 1500),
                            resp_bytes=rng.randint(200, 9000),
                            orig_pkts=rng.randint(2, 12),
                            resp_pkts=rng.randint(2, 12),
                            tcp_flags=0x1B if proto == "tcp" else 0,
                            orig_mac=dev.mac,
                        )
                    )
            yield t0 + 60, batch

    def datagrams(self, minutes: int) -> Iterator[bytes]:
        """The flows as a router exports them: NetFlow v9, template in every datagram."""
        for seq, (export, batch) in enumerate(self.flows(minutes)):
            for i in range(0, len(batch), 8):
                yield build_v9(batch[i : i + 8], unix_secs=int(export), sequence=seq * 10 + i)

    def secrets(self) -> list[bytes]:
        """What must never leave the home: addresses (text and packed), MACs, names, entities."""
        out: list[bytes] = []
        for dev in self.devices:
            out += [dev.ip.encode(), socket.inet_aton(dev.ip), dev.hostname.encode()]
            out += [
                dev.mac.encode(),
                dev.mac.replace(":", "").encode(),
                bytes.fromhex(dev.mac.replace(":", "")),
            ]
            out += [remote.encode() for remote, _, _ in dev.services]
        out += [e.encode() for e in self.entities]
        out += [f"{self.name}-power-{v}".encode() for v in range(3)]  # the state values sent
        stamp = int(self.start)
        out += [str(stamp).encode(), struct.pack(">I", stamp), struct.pack("<I", stamp)]
        return out


def send_datagrams(port: int, datagrams: Iterator[bytes]) -> int:
    """Send every datagram to 127.0.0.1:``port``; return how many."""
    n = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in datagrams:
            sock.sendto(datagram, ("127.0.0.1", port))
            n += 1
    return n
