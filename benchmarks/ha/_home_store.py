"""30 days of a 50-device home's training windows, made as GIoT's detector makes them.

Used by ``hub_round`` to fill the window store as the integration would have after a month. It
runs in a process of its own (``python -m benchmarks.ha._home_store OUT.npz END_TS``) so that the
hundreds of thousands of records it makes never live in Home Assistant's process.

The home: 26 network devices (cameras, speakers, TVs, phones, laptops, a NAS, a thermostat, a
printer, Wi-Fi plugs and bulbs) whose flows the engine tokenizes (``Detector.observe``, the
detector's own tokenization), and 24 Zigbee devices known only by their state changes (motion
and door sensors, climate sensors, lights, locks: ``event_tokens``). Each device has a rate of
records per hour by day and by night; a window is cut as ``InProcessDetector._learn`` cuts them
([BOS] and the device's last 63 tokens, every 4th record once the tail is full).

One shortcut, for the shared 2-core machine: of a busy device-hour only a run of
``RECORDS_PER_HOUR`` consecutive records (at the device's natural spacing) is made, i.e. at most
two windows an hour. The store could not keep more anyway: 2,000 windows per device spread over
720 hours, and 20,000 in all (about 400 per busy device), of which each hour keeps its newest.
What a hub would have handed to the store unbounded is counted from the natural rates.
"""

import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from giot_engine.detector import BigramModel, Detector
from giot_engine.hub_detector import InProcessDetector
from giot_engine.records import DeviceEvent, EventSource, FlowRecord
from giot_engine.tokenizer import BOS_ID, TokenContext, Vocabulary, event_tokens

DAYS = 30
HOUR_S = 3600.0
WINDOWS_PER_HOUR = 2
RECORDS_PER_HOUR = WINDOWS_PER_HOUR * InProcessDetector.WINDOW_EVERY
GATEWAY = "192.168.1.1"
HUB = "192.168.1.2"  # Home Assistant, the MQTT broker
NVR = "192.168.1.3"

# port, protocol, peer, bytes up, bytes down, seconds, packets, Zeek state, history
Service = tuple[int, str, str, int, int, float, int, str, str]
HTTPS: Service = (443, "tcp", "remote", 1500, 6000, 1.0, 20, "SF", "ShADadFf")
DNS: Service = (53, "udp", GATEWAY, 70, 140, 0.02, 2, "SF", "Dd")
NTP: Service = (123, "udp", "remote", 76, 76, 0.05, 2, "SF", "Dd")
MQTT: Service = (1883, "tcp", HUB, 200, 120, 60.0, 8, "SF", "ShADadFf")
RTSP: Service = (554, "tcp", NVR, 3000, 900_000, 60.0, 700, "SF", "ShADadFf")
MDNS: Service = (5353, "udp", "224.0.0.251", 300, 0, 0.0, 1, "S0", "D")
SSDP: Service = (1900, "udp", "239.255.255.250", 400, 0, 0.0, 1, "S0", "D")
SMB: Service = (445, "tcp", "192.168.1.20", 4000, 60_000, 5.0, 80, "SF", "ShADadFf")
STUN: Service = (3478, "udp", "remote", 100, 100, 0.1, 2, "SF", "Dd")


@dataclass(frozen=True)
class Kind:
    """A kind of device: how many, records per hour in its busy hours and otherwise, what."""

    name: str
    count: int
    busy_rate: float
    quiet_rate: float
    busy_hours: range
    services: tuple[tuple[Service, float], ...] = ()  # network devices: services and weights
    event: tuple[str, str | None, tuple[str, str] | None, EventSource] | None = None


FLOW_KINDS = (
    Kind("camera", 2, 720, 720, range(24), ((HTTPS, 0.4), (RTSP, 0.3), (DNS, 0.2), (NTP, 0.1))),
    Kind(
        "speaker", 3, 120, 60, range(7, 23), ((HTTPS, 0.6), (DNS, 0.25), (MDNS, 0.1), (NTP, 0.05))
    ),
    Kind("tv", 2, 400, 20, range(17, 24), ((HTTPS, 0.7), (DNS, 0.2), (SSDP, 0.1))),
    Kind("phone", 3, 200, 30, range(7, 23), ((HTTPS, 0.7), (DNS, 0.2), (STUN, 0.05), (MDNS, 0.05))),
    Kind("laptop", 2, 300, 5, range(8, 19), ((HTTPS, 0.6), (DNS, 0.3), (SMB, 0.05), (MDNS, 0.05))),
    Kind("nas", 1, 60, 60, range(24), ((SMB, 0.3), (HTTPS, 0.3), (DNS, 0.3), (NTP, 0.1))),
    Kind("thermostat", 1, 12, 12, range(24), ((HTTPS, 0.7), (DNS, 0.2), (NTP, 0.1))),
    Kind("printer", 1, 3, 3, range(24), ((MDNS, 0.6), (SSDP, 0.3), (DNS, 0.1))),
    Kind("plug", 11, 60, 60, range(24), ((MQTT, 0.8), (DNS, 0.1), (NTP, 0.1))),
)
EVENT_KINDS = (
    Kind(
        "motion", 6, 20, 1, range(7, 23), event=("binary_sensor", "motion", ("on", "off"), "device")
    ),
    Kind("door", 6, 3, 0.2, range(7, 23), event=("binary_sensor", "door", ("on", "off"), "device")),
    Kind("climate", 6, 6, 6, range(24), event=("sensor", "temperature", None, "device")),
    Kind("light", 4, 2, 0.1, range(7, 24), event=("light", None, ("on", "off"), "user")),
    Kind("lock", 2, 0.4, 0.05, range(7, 23), event=("lock", None, ("locked", "unlocked"), "user")),
)
KINDS = FLOW_KINDS + EVENT_KINDS


def devices() -> list[tuple[str, Kind]]:
    """Every device of the home: its store key and kind (50 in all)."""
    out = []
    for kind in KINDS:
        out += [(f"{kind.name}-{i}", kind) for i in range(kind.count)]
    return out


def _times(rng: np.random.Generator, start: float, natural: int) -> np.ndarray:
    """The made records' times in an hour: all of them, or a run at their natural spacing."""
    if natural <= RECORDS_PER_HOUR:
        return np.sort(start + rng.uniform(0, HOUR_S, natural))
    spacing = HOUR_S / natural
    first = start + rng.uniform(0, HOUR_S - spacing * RECORDS_PER_HOUR)
    return first + spacing * np.arange(RECORDS_PER_HOUR) + rng.uniform(0, spacing / 4)


def _flow_maker(
    kind: Kind, address: str, rng: np.random.Generator
) -> Callable[[float], FlowRecord]:
    weights = np.array([w for _, w in kind.services])
    weights /= weights.sum()

    def make(ts: float) -> FlowRecord:
        port, proto, peer, up, down, seconds, pkts, state, history = kind.services[
            int(rng.choice(len(weights), p=weights))
        ][0]
        if peer == "remote":
            peer = f"{int(rng.choice([34, 52, 142, 151]))}.{int(rng.integers(1, 255))}.7.9"
        jitter = float(rng.uniform(0.7, 1.4))
        return FlowRecord(
            ts=float(ts),
            orig_h=address,
            orig_p=int(rng.integers(32768, 61000)),
            resp_h=peer,
            resp_p=port,
            proto=proto,
            duration=seconds * jitter,
            orig_bytes=int(up * jitter),
            resp_bytes=int(down * jitter),
            conn_state=state,
            history=history,
            orig_pkts=max(1, int(pkts * jitter) // 2),
            resp_pkts=int(pkts * jitter) // 2,
        )

    return make


def _event_maker(kind: Kind, key: str, rng: np.random.Generator) -> Callable[[float], DeviceEvent]:
    assert kind.event is not None
    domain, device_class, states, source = kind.event
    last = {"state": states[1] if states else "20.0"}

    def make(ts: float) -> DeviceEvent:
        old = last["state"]
        change = None
        if states is None:  # a numeric sensor drifting
            new = f"{float(old) + float(rng.normal(0, 0.3)):.1f}"
            change = (float(new) - float(old)) / max(abs(float(old)), 1e-6)
        else:
            new = states[0] if old == states[1] else states[1]
        last["state"] = new
        return DeviceEvent(
            ts=float(ts),
            entity_id=f"{domain}.{key.replace('-', '_')}",
            domain=domain,
            new_state=new,
            old_state=old,
            device_class=device_class,
            numeric_change=change,
            source=source,
            device_id=key,
        )

    return make


def make_windows(end_ts: float, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Every device's windows over the ``DAYS`` before ``end_ts``; and what was counted."""
    rng = np.random.default_rng(seed)
    vocab = Vocabulary.default()
    detector = Detector(BigramModel(np.zeros((len(vocab), len(vocab)))), vocab=vocab)
    width = InProcessDetector.WINDOW_TOKENS
    every = InProcessDetector.WINDOW_EVERY
    keys: list[str] = []
    windows: list[np.ndarray] = []
    stamps: list[float] = []
    made = natural_records = natural_windows = 0
    start = end_ts - DAYS * 86400.0 + 600.0  # inside the retention period when the store adds
    for index, (key, kind) in enumerate(devices()):
        address = f"192.168.1.{100 + index}"
        make: Callable[[float], FlowRecord | DeviceEvent] = (
            _flow_maker(kind, address, rng) if kind.event is None else _event_maker(kind, key, rng)
        )
        tail: deque[int] = deque(maxlen=width)
        event_times: deque[float] = deque()
        prev_ts: float | None = None
        count = 0
        for hour in range(DAYS * 24):
            hour_start = start + hour * HOUR_S
            rate = kind.busy_rate if (hour % 24) in kind.busy_hours else kind.quiet_rate
            natural = int(rng.poisson(rate))
            natural_records += natural
            # a drain takes at most PENDING_PER_DEVICE of a device's windows a minute
            natural_windows += min(natural // every, InProcessDetector.PENDING_PER_DEVICE * 60)
            for ts in _times(rng, hour_start, natural):
                record = make(float(ts))
                if isinstance(record, FlowRecord):
                    ids = detector.observe(record)[1]
                else:
                    while event_times and event_times[0] < ts - 60.0:
                        event_times.popleft()
                    context = TokenContext(prev_ts, len(event_times))
                    ids = vocab.encode(event_tokens(record, context))
                    event_times.append(float(ts))
                    prev_ts = float(ts)
                made += 1
                count += 1
                tail.extend(ids)
                if len(tail) == width and count % every == 0:
                    keys.append(key)
                    windows.append(np.asarray([BOS_ID, *tail], np.int32))
                    stamps.append(float(ts))
    arrays = {
        "keys": np.array(keys, np.str_),
        "windows": np.stack(windows),
        "stamps": np.array(stamps, np.float64),
    }
    counts = {
        "records_made": made,
        "natural_records": natural_records,
        "natural_windows": natural_windows,
    }
    return arrays, counts


def main() -> None:
    """Write the windows (and the counts) to the npz named on the command line."""
    out, end_ts = sys.argv[1], float(sys.argv[2])
    arrays, counts = make_windows(end_ts)
    numbers = {name: np.array(value) for name, value in counts.items()}
    with open(out, "wb") as handle:
        np.savez(handle, allow_pickle=False, **arrays, **numbers)


if __name__ == "__main__":
    main()
