"""Emulated homes: the latency/energy model and a Grid whose replies arrive on an emulated clock."""

from __future__ import annotations

import numpy as np
import pytest

from fl_server.client_app import make_client_app
from fl_server.run_config import RunConfig
from fl_server.server_app import build_strategy, initial_arrays
from fl_server.simulation.grid import ProfiledGrid
from fl_server.simulation.profiles import (
    DEVICES,
    E_RX_J_PER_BIT,
    E_TX_J_PER_BIT,
    NETWORKS,
    DeviceProfile,
    NetworkProfile,
    NodeProfile,
    assign_profiles,
    compute_seconds,
    round_cost,
    tcp_throughput_bps,
)
from fl_server.strategy.gsfs import GSFS


def test_round_cost_formula() -> None:
    net = NetworkProfile("x", up_bps=8e6, down_bps=16e6, rtt_s=0.05, sigma=0.0)
    node = NodeProfile(net, DeviceProfile("d", gflops=2.0, p_cpu_w=5.0))
    compute = compute_seconds(node.device, n_params=1000, tokens=1_000_000)
    assert compute == pytest.approx(6 * 1000 * 1e6 / 2e9)
    cost = round_cost(
        node, np.random.default_rng(0), bytes_down=2_000_000, bytes_up=1_000_000, compute_s=1.0
    )
    assert cost.available
    assert cost.compute_s == pytest.approx(1.0)
    assert cost.seconds == pytest.approx(2 * 0.05 + 1.0 + 1.0 + 1.0)
    bits_up, bits_down = 8e6, 16e6
    assert cost.joules == pytest.approx(
        5.0 * 1.0 + E_TX_J_PER_BIT * bits_up + E_RX_J_PER_BIT * bits_down
    )


def test_packet_loss_bounds_tcp_throughput() -> None:
    # Mathis et al.: rate <= MSS * C / (RTT * sqrt(p)); 1% loss at 100 ms caps ~1.4 Mbit/s.
    capped = tcp_throughput_bps(100e6, 0.1, 0.01)
    assert capped == pytest.approx(1460 * 8 * np.sqrt(1.5) / (0.1 * 0.1))
    assert tcp_throughput_bps(1e6, 0.1, 0.01) == 1e6  # the link is the bottleneck
    assert tcp_throughput_bps(100e6, 0.1, 0.0) == 100e6


def test_assign_profiles_is_deterministic() -> None:
    a = assign_profiles(20, seed=3)
    assert a == assign_profiles(20, seed=3)
    assert {p.network.name for p in a} <= set(NETWORKS)
    assert {p.device.name for p in a} <= set(DEVICES)


def test_slow_home_is_left_out_by_the_sensed_deadline() -> None:
    cfg = RunConfig.load(
        {},
        {
            "num-server-rounds": 3,
            "local-steps": 2,
            "gsfs-min-steps": 2,
            "gsfs-max-steps": 2,
            "windows-per-node": 16,
            "n-embd": 16,
            "fraction-evaluate": 0.0,
            "gsfs-target-round-s": 1.0,
            "gsfs-deadline-quantile": 0.75,  # 3 of 4 homes set the pace
        },
    )
    fast = NodeProfile(NETWORKS["fiber"], DEVICES["mini-pc"])
    crawl = NodeProfile(
        NetworkProfile("modem", up_bps=2e3, down_bps=2e3, rtt_s=0.5, sigma=0.0), DEVICES["rpi4"]
    )  # ~40 s per round for the tiny model: far behind the fast homes
    grid = ProfiledGrid(make_client_app(cfg), [fast, fast, fast, crawl], seed=1)
    strategy = build_strategy(cfg)
    assert isinstance(strategy, GSFS)
    strategy.start(grid, initial_arrays(cfg), num_rounds=3, timeout=cfg.round_timeout)
    # Round 1 waits for everyone (nothing sensed yet); then the deadline follows the fast homes
    # and the crawling home, predicted to miss it, is not asked (FedCS) instead of missing.
    assert strategy.history[0]["missed"] == 0
    assert strategy.history[0]["asked"] == 4
    assert strategy.history[2]["deadline-s"] < strategy.history[0]["deadline-s"]
    assert [h["asked"] for h in strategy.history[1:]] == [3, 3]
    assert strategy.history[2]["missed"] == 0
    assert strategy.fedcs_skips[4] == 2
    assert strategy.sensor.nodes[4].bytes_per_s is not None
    assert strategy.sensor.nodes[4].bytes_per_s < strategy.sensor.nodes[1].bytes_per_s
    assert strategy.sensor.plan(4, 0).budget < strategy.sensor.plan(1, 0).budget
