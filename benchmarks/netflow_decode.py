"""How many flow records per second the pure-Python NetFlow/IPFIX decoder handles on one core.

The Home Assistant collector decodes in the event loop, so this bounds the flow rate a hub can
take before decoding alone costs a core. Datagrams of 30 records (the usual v5/v9 packet size)
are built with the test-tree builders, decoded in a loop by one warm decoder (templates already
learnt, as in steady state), and timed in process CPU time (``time.process_time``), so that other
work on a shared machine does not count.

    scripts/bench netflow-decode --seconds 2
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shlex
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from giot_engine.netflow import NetFlowDecoder
from giot_engine.records import FlowRecord
from tests.engine.netflow_packets import (
    DOC_ENTERPRISE,
    IPFIX_IPV4_FIELDS,
    VARLEN,
    Field,
    build_ipfix,
    build_v5,
    build_v9,
)

EXPORT_TIME = 1_700_000_000
IPFIX_FIXED_FIELDS = IPFIX_IPV4_FIELDS[:11]  # without the variable-length and enterprise fields
SHORT_VARLEN = {Field(2, VARLEN, DOC_ENTERPRISE): b"vendor-tag"}  # not the tests' 300 bytes


def random_flows(rng: random.Random, n: int) -> list[FlowRecord]:
    """Home-network-like flows: LAN hosts to random peers, mostly TCP and UDP."""
    out = []
    for _ in range(n):
        proto = rng.choice(["tcp", "tcp", "udp", "udp", "icmp"])
        out.append(
            FlowRecord(
                ts=EXPORT_TIME - rng.randint(0, 60_000) / 1000,
                orig_h=f"192.168.1.{rng.randint(2, 254)}",
                orig_p=rng.randint(1024, 65535) if proto != "icmp" else 8,
                resp_h=".".join(str(rng.randint(1, 254)) for _ in range(4)),
                resp_p=rng.choice([53, 80, 123, 443, 8883]) if proto != "icmp" else 0,
                proto=proto,
                duration=rng.randint(0, 30_000) / 1000,
                orig_bytes=rng.randint(40, 10_000_000),
                orig_pkts=rng.randint(1, 10_000),
                tcp_flags=rng.randint(0, 63) if proto == "tcp" else 0,
                orig_mac=f"02:00:00:00:00:{rng.randint(0, 255):02x}",
            )
        )
    return out


def datagrams(fmt: str, count: int, per: int, seed: int) -> tuple[bytes, list[bytes]]:
    """Build a template-bearing first datagram, then ``count`` data-only datagrams."""
    rng = random.Random(seed)
    builders: dict[str, Callable[[list[FlowRecord], int, bool], bytes]] = {
        "v5": lambda r, s, _t: build_v5(r, unix_secs=EXPORT_TIME, sequence=s * per),
        "v9": lambda r, s, t: build_v9(r, unix_secs=EXPORT_TIME, sequence=s, include_template=t),
        "ipfix": lambda r, s, t: build_ipfix(
            r, export_time=EXPORT_TIME, sequence=s * per, include_template=t, extra=SHORT_VARLEN
        ),
        "ipfix-fixed": lambda r, s, t: build_ipfix(
            r,
            export_time=EXPORT_TIME,
            sequence=s * per,
            include_template=t,
            fields=IPFIX_FIXED_FIELDS,
        ),
    }
    build = builders[fmt]
    first = build(random_flows(rng, per), 0, True)
    return first, [build(random_flows(rng, per), i + 1, False) for i in range(count)]


def measure(fmt: str, seconds: float, count: int, per: int, seed: int) -> dict[str, float]:
    """Decode the datagrams round and round for about ``seconds``; return rates."""
    first, batch = datagrams(fmt, count, per, seed)
    decoder = NetFlowDecoder()
    decoder.decode(first, "192.0.2.1", 0.0)
    records = rounds = 0
    start = time.process_time()
    elapsed = 0.0
    while elapsed < seconds:
        for datagram in batch:
            records += len(decoder.decode(datagram, "192.0.2.1", 0.0))
        rounds += 1
        elapsed = time.process_time() - start
    if decoder.stats.total_rejected or records != rounds * count * per:
        raise RuntimeError(f"{fmt}: decoding failed: {decoder.stats}")
    return {
        "records_per_s": records / elapsed,
        "datagrams_per_s": rounds * count / elapsed,
        "us_per_datagram": elapsed / (rounds * count) * 1e6,
        "bytes_per_datagram": sum(map(len, batch)) / count,
    }


def main(argv: list[str] | None = None) -> None:
    """Run the measurement and write docs/results/netflow_decode.md."""
    parser = argparse.ArgumentParser(description="NetFlow/IPFIX records decoded per second")
    parser.add_argument("--formats", nargs="+", default=["v9", "ipfix", "ipfix-fixed", "v5"])
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per format")
    parser.add_argument("--datagrams", type=int, default=200, help="distinct datagrams cycled")
    parser.add_argument("--records", type=int, default=30, help="records per datagram")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/results/netflow_decode.md"))
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):  # one core, as in Home Assistant's event loop
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rows = []
    for fmt in args.formats:
        r = measure(fmt, args.seconds, args.datagrams, args.records, args.seed)
        print(f"{fmt}: {r['records_per_s']:,.0f} records/s", flush=True)
        rows.append(
            f"| {fmt} | {r['records_per_s']:,.0f} | {r['datagrams_per_s']:,.0f} "
            f"| {r['us_per_datagram']:.1f} | {r['bytes_per_datagram']:.0f} |"
        )
    command = "scripts/bench netflow-decode " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = "\n".join(
        [
            "# NetFlow / IPFIX decoding speed",
            "",
            "`giot_engine.netflow.NetFlowDecoder`, pure Python, one core, warm decoder",
            f"(templates learnt), datagrams of {args.records} records, {args.seconds:g} CPU",
            "seconds per format (process time: other load on the shared machine is not counted).",
            "`ipfix` uses the test builders' default template (a variable-length field and two",
            "enterprise fields, one of them variable-length: decoded field by field);",
            "`ipfix-fixed` the same information elements without them (one precompiled struct",
            "per record). Records are random home-network flows (fixed seed).",
            "",
            f"- Command: `{command}`",
            f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"- Machine: {platform.platform()}, {platform.machine()},"
            f" {os.cpu_count()} CPUs (shared), Python {platform.python_version()}",
            "",
            "| format | records/s | datagrams/s | µs/datagram | bytes/datagram |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
