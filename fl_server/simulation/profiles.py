"""Network and device profiles of home hubs, and the latency and energy model of one round.

Model of one node's round (per node, per round; every constant below is stated and sourced)::

    thr_up   = min(up_bps,   MSS*8*sqrt(3/2) / (rtt * sqrt(loss)))      (Mathis et al. 1997)
    thr_down = min(down_bps, MSS*8*sqrt(3/2) / (rtt * sqrt(loss)))
    t_compute = 6 * n_params * tokens_trained / flops_effective        (Kaplan et al. 2020)
    t_round  = rtt + 8 * bytes_down / thr_down + t_compute + rtt + 8 * bytes_up / thr_up
    E        = P_cpu * t_compute + e_tx * bits_up + e_rx * bits_down

``P_cpu`` is the *marginal* power of training (load minus idle): a hub is powered all day anyway,
so only what training adds is the federation's energy. A round lasts as long as its slowest
included participant (or the server's deadline, if someone is late): that is computed by the
Grid/benchmark from these per-node times.

Sources, and what is assumed:

- Link tiers and their mix: the FCC's Measuring Broadband America (MBA) fixed reports (Twelfth,
  2022, and Thirteenth, 2024 editions; open data, per-technology charts of median up/down speed,
  idle latency and peak-period packet loss in the classes < 0.4 %, 0.4-1 %, > 1 %) show DSL with
  upload speeds of about 1 Mbps and latencies of 25-40 ms, cable with asymmetric 10-35 Mbps
  uplinks and ~15-25 ms, fibre symmetric and ~10 ms (Ookla's US reports: best ISP median latency
  9 ms). The FCC's 2024 broadband benchmark is 100/20 Mbps. The tier medians below sit in those
  ranges; they are rounded assumptions, not values read from one table. Per-round throughput is
  log-normal around the tier median (sigma 0.5, a common model of throughput variability); packet
  loss per tier from the MBA classes. The tier mix (cable 55 %, fibre 25 %, DSL 10 %, fixed
  wireless/LTE 10 %) roughly follows the US technology shares of the FCC's Internet Access
  Services reports; it is an assumption.
- TCP throughput under loss: Mathis, Semke, Mahdavi, Ott, "The macroscopic behavior of the TCP
  congestion avoidance algorithm", ACM CCR 27(3), 1997 (C = sqrt(3/2), MSS 1460 B).
- Training compute: 6 FLOPs per parameter per trained token (forward + backward; Kaplan et al.,
  "Scaling laws for neural language models", 2020). Effective throughputs are assumptions: numpy
  on a tiny GPT-2 reaches a few percent of peak. A Raspberry Pi 4 (4x Cortex-A72, 1.5 GHz) runs
  HPL at roughly 10-13 GFLOP/s on four cores; we assume 1 GFLOP/s effective for one numpy process.
  A Home Assistant Green (4x Cortex-A55) is taken as 0.4 GFLOP/s, an Intel N100-class mini PC as
  4 GFLOP/s. Calibrate with ``scripts/bench cost`` on the real device before quoting seconds.
- Device power: Raspberry Pi 4 measured at the wall at 2.7 W baseline / 3.0 W idle and 6.3 W under
  high CPU load (chipwired.com, "How much power does a Raspberry Pi use", 36 measurements, watt
  meter column): marginal 3.3 W. HA Green and mini PC: assumptions (1.5 W and 10 W marginal).
- Radio energy: Feeney & Nilsson (IEEE INFOCOM 2001) measured an 802.11 NIC at about 1.9 uJ/byte
  sent and 0.5 uJ/byte received. That hardware is old, so these are an upper bound for today's
  Wi-Fi; a wired hub spends less. Both are charged on the bytes the application moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MSS_BYTES = 1460
MATHIS_C = math.sqrt(1.5)
FLOPS_PER_PARAM_TOKEN = 6.0


@dataclass(frozen=True)
class NetworkProfile:
    """A home's access link."""

    name: str
    up_bps: float  # median uplink, bit/s
    down_bps: float  # median downlink, bit/s
    rtt_s: float  # base round-trip time
    loss: float = 0.0  # packet loss rate (Mathis bound on TCP throughput)
    availability: float = 1.0  # probability the node is reachable in a round
    sigma: float = 0.5  # log-normal spread of per-round throughput


@dataclass(frozen=True)
class DeviceProfile:
    """The hub that trains."""

    name: str
    gflops: float  # effective training throughput (see module docstring)
    p_cpu_w: float  # marginal power while training (load minus idle)


NETWORKS: dict[str, NetworkProfile] = {
    "fiber": NetworkProfile("fiber", up_bps=300e6, down_bps=300e6, rtt_s=0.010, loss=0.001),
    "cable": NetworkProfile("cable", up_bps=20e6, down_bps=200e6, rtt_s=0.020, loss=0.002),
    "dsl": NetworkProfile("dsl", up_bps=1e6, down_bps=15e6, rtt_s=0.035, loss=0.005),
    "lte": NetworkProfile(
        "lte", up_bps=5e6, down_bps=25e6, rtt_s=0.050, loss=0.01, availability=0.95
    ),
}
NETWORK_MIX: dict[str, float] = {"cable": 0.55, "fiber": 0.25, "dsl": 0.10, "lte": 0.10}

DEVICES: dict[str, DeviceProfile] = {
    "rpi4": DeviceProfile("rpi4", gflops=1.0, p_cpu_w=3.3),
    "ha-green": DeviceProfile("ha-green", gflops=0.4, p_cpu_w=1.5),
    "mini-pc": DeviceProfile("mini-pc", gflops=4.0, p_cpu_w=10.0),
}
DEVICE_MIX: dict[str, float] = {"rpi4": 0.5, "ha-green": 0.3, "mini-pc": 0.2}

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
    num_nodes: int,
    seed: int,
    mix: dict[str, float] | None = None,
    devices: dict[str, float] | None = None,
) -> list[NodeProfile]:
    """Draw each node's link tier from ``mix`` and its hub from ``devices`` (defaults above)."""
    rng = np.random.default_rng(seed)
    mix = mix or NETWORK_MIX
    devices = devices or DEVICE_MIX
    names, dnames = list(mix), list(devices)
    p = np.array([mix[n] for n in names], float)
    q = np.array([devices[n] for n in dnames], float)
    nets = rng.choice(len(names), size=num_nodes, p=p / p.sum())
    devs = rng.choice(len(dnames), size=num_nodes, p=q / q.sum())
    return [
        NodeProfile(NETWORKS[names[int(n)]], DEVICES[dnames[int(d)]])
        for n, d in zip(nets, devs, strict=True)
    ]


def tcp_throughput_bps(link_bps: float, rtt_s: float, loss: float) -> float:
    """Achievable TCP rate: the link rate, or the Mathis et al. bound under loss if lower."""
    if loss <= 0:
        return link_bps
    return min(link_bps, MSS_BYTES * 8 * MATHIS_C / (max(rtt_s, 1e-4) * math.sqrt(loss)))


def compute_seconds(device: DeviceProfile, n_params: int, tokens: int) -> float:
    """Training time of ``tokens`` trained tokens of a model of ``n_params`` on ``device``."""
    return FLOPS_PER_PARAM_TOKEN * n_params * tokens / (device.gflops * 1e9)


def round_cost(
    node: NodeProfile,
    rng: np.random.Generator,
    *,
    bytes_down: int,
    bytes_up: int,
    compute_s: float,
) -> RoundCost:
    """Sample one round's latency and energy for a node under its profile."""
    net, dev = node.network, node.device
    available = bool(rng.random() < net.availability)
    up = tcp_throughput_bps(net.up_bps * float(rng.lognormal(0.0, net.sigma)), net.rtt_s, net.loss)
    down = tcp_throughput_bps(
        net.down_bps * float(rng.lognormal(0.0, net.sigma)), net.rtt_s, net.loss
    )
    seconds = 2 * net.rtt_s + 8 * bytes_down / down + compute_s + 8 * bytes_up / up
    joules = (
        dev.p_cpu_w * compute_s + E_TX_J_PER_BIT * 8 * bytes_up + E_RX_J_PER_BIT * 8 * bytes_down
    )
    return RoundCost(available, seconds, compute_s, joules)
