"""Network and device profiles of home hubs, and the latency and energy model of one round.

Model of one node's round (all per node, per round)::

    t_round  = rtt + 8 * bytes_down / down_bps + t_compute + 8 * bytes_up / up_bps
    t_compute = steps * step_s(device)
    E        = P_cpu * t_compute + e_tx * bits_up + e_rx * bits_down

Sources, and what is assumed:

- Device power: Raspberry Pi 4 measured at the wall at 2.7 W baseline and 6.3 W under high CPU
  load (chipwired.com, "How much power does a Raspberry Pi use", 36 measurements, watt-meter
  column). The mini-PC figures are an assumption (a 15 W-TDP class laptop chip), flagged below.
- Radio energy per byte: Feeney & Nilsson (IEEE INFOCOM 2001) measured an 802.11 NIC at about
  1.9 uJ/byte sent and 0.5 uJ/byte received (plus a per-packet cost we fold into the rate). That
  hardware is old, so these are an upper bound for today's Wi-Fi; wired Ethernet is far cheaper.
- Link speeds: the tiers are assumptions chosen to span what the FCC Measuring Broadband America
  reports show for US fixed broadband (DSL with ~1 Mbps uplinks up to fibre with symmetric
  100+ Mbps) plus an LTE-backhauled home; per-round speeds are log-normal around the tier's
  median (sigma 0.5), a common model of throughput variability. Calibrate ``NETWORKS`` against
  the FCC MBA open data before quoting absolute times.
- Step time: measured on this machine by the ClientApp, scaled by the device's ``slowdown``
  (an assumption: a Raspberry Pi 4 core is several times slower than a desktop core at float32
  matmul).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NetworkProfile:
    """A home's access link."""

    name: str
    up_bps: float  # median uplink, bit/s
    down_bps: float  # median downlink, bit/s
    rtt_s: float  # base round-trip time
    availability: float = 1.0  # probability the node is reachable in a round
    sigma: float = 0.5  # log-normal spread of per-round throughput


@dataclass(frozen=True)
class DeviceProfile:
    """The hub that trains."""

    name: str
    slowdown: float  # step time relative to the machine the simulation runs on
    p_active_w: float
    p_idle_w: float


NETWORKS: dict[str, NetworkProfile] = {
    "fiber": NetworkProfile("fiber", up_bps=100e6, down_bps=300e6, rtt_s=0.010),
    "cable": NetworkProfile("cable", up_bps=20e6, down_bps=200e6, rtt_s=0.020),
    "dsl": NetworkProfile("dsl", up_bps=1e6, down_bps=20e6, rtt_s=0.035),
    "lte": NetworkProfile("lte", up_bps=5e6, down_bps=20e6, rtt_s=0.060, availability=0.9),
}

DEVICES: dict[str, DeviceProfile] = {
    # chipwired.com watt-meter readings: baseline 2.7 W, high load 6.3 W. Slowdown: assumption.
    "rpi4": DeviceProfile("rpi4", slowdown=4.0, p_active_w=6.3, p_idle_w=2.7),
    # Assumption: a 15 W-TDP mini PC (no measurement cited).
    "mini-pc": DeviceProfile("mini-pc", slowdown=1.0, p_active_w=15.0, p_idle_w=5.0),
}

E_TX_J_PER_BIT = 1.9e-6 / 8  # Feeney & Nilsson 2001, 802.11 send
E_RX_J_PER_BIT = 0.5e-6 / 8  # Feeney & Nilsson 2001, 802.11 receive


@dataclass(frozen=True)
class NodeProfile:
    """One home: its link and its hub."""

    network: NetworkProfile
    device: DeviceProfile


@dataclass(frozen=True)
class RoundCost:
    """What one node's round took."""

    available: bool
    seconds: float
    compute_s: float
    joules: float


def assign_profiles(
    num_nodes: int, seed: int, mix: dict[str, float] | None = None
) -> list[NodeProfile]:
    """Draw each node's network tier from ``mix`` (default: equal shares) and a device."""
    rng = np.random.default_rng(seed)
    mix = mix or dict.fromkeys(NETWORKS, 1.0)
    names = list(mix)
    p = np.array([mix[n] for n in names], float)
    nets = rng.choice(len(names), size=num_nodes, p=p / p.sum())
    devs = rng.choice(list(DEVICES), size=num_nodes, p=[0.7, 0.3])
    return [
        NodeProfile(NETWORKS[names[int(n)]], DEVICES[str(d)])
        for n, d in zip(nets, devs, strict=True)
    ]


def round_cost(
    node: NodeProfile,
    rng: np.random.Generator,
    *,
    bytes_down: int,
    bytes_up: int,
    measured_compute_s: float,
) -> RoundCost:
    """Sample one round's latency and energy for a node under its profile."""
    net, dev = node.network, node.device
    available = bool(rng.random() < net.availability)
    up = net.up_bps * float(rng.lognormal(0.0, net.sigma))
    down = net.down_bps * float(rng.lognormal(0.0, net.sigma))
    compute_s = measured_compute_s * dev.slowdown
    seconds = net.rtt_s + 8 * bytes_down / down + compute_s + 8 * bytes_up / up
    joules = (
        dev.p_active_w * compute_s + E_TX_J_PER_BIT * 8 * bytes_up + E_RX_J_PER_BIT * 8 * bytes_down
    )
    return RoundCost(available, seconds, compute_s, joules)
