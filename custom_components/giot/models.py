"""What GIoT knows about the watched devices and the hub: plain state the other parts share.

These are data only; the parts that change them (devices, ingest, absence, training) and the
entities that show them import them from here, so none of them has to import another part.
"""

from dataclasses import dataclass, field
from datetime import datetime

from homeassistant.config_entries import ConfigEntry

from giot_engine.hub_detector import Description
from giot_engine.records import Severity

from .const import (
    CONF_NODE_HOST,
    CONF_NODE_PORT,
    CONF_NODE_TOKEN,
    MODEL_ORIGIN_LOCAL,
    AlertType,
    FederationStatus,
)


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where the GIoT node (the Flower SuperNode beside Home Assistant) listens.

    ``token`` is the pairing token; an entry made before pairing existed has none (its link
    asks for one with a reauthentication flow).
    """

    host: str
    port: int
    token: str = field(default="", repr=False)


def node_from_entry(entry: ConfigEntry) -> NodeAddress | None:
    """Read the entry's node address: without one, detection still runs locally."""
    host = entry.data.get(CONF_NODE_HOST)
    port = entry.data.get(CONF_NODE_PORT)
    token = str(entry.data.get(CONF_NODE_TOKEN, ""))
    return NodeAddress(host, int(port), token) if host and port else None


@dataclass(slots=True)
class WatchedDevice:
    """What GIoT knows about one watched device.

    ``key`` is the Home Assistant device id for registry devices and ``net:<address>`` for
    devices only seen on the network. ``source_entity_id`` is an entity of the registry device
    that our entities link through (helper style: we never claim the device itself).
    ``dynamic`` marks a registry device watched because flows were attributed to it, not
    because an option chose it. ``absence`` is the silent / stuck alarm while it lasts.

    ``score`` is the latest record's score, ``peak`` the highest score of the alarm episode
    (every alarming verdict raises it; the first of an episode sets it). The score sensor shows
    ``shown_score``: the episode's peak while the device is in alarm, the latest score
    otherwise, so the score sensor and the anomaly sensor never contradict each other.
    """

    key: str
    name: str
    device_id: str | None = None
    source_entity_id: str | None = None
    address: str | None = None
    score: float | None = None
    alert_type: AlertType | None = None
    severity: Severity | None = None
    explanation: str | None = None
    alarm_until: datetime | None = None
    snoozed_until: datetime | None = None
    last_seen: datetime | None = None
    description: Description | None = None
    observations: int = 0
    last_fired: dict[AlertType, datetime] = field(default_factory=dict)
    absence: AlertType | None = None
    absence_announced: bool = False
    dynamic: bool = False
    peak: float | None = None

    def raise_peak(self, score: float, now: datetime) -> None:
        """Count an alarming verdict's score into the episode's peak (before it holds the alarm).

        A verdict after the episode ended (hold over, no absence) starts a new one; a snooze
        does not end an episode, it only keeps it quiet.
        """
        ongoing = self.absence is not None or (
            self.alarm_until is not None and now < self.alarm_until
        )
        self.peak = score if not ongoing or self.peak is None else max(self.peak, score)

    def shown_score(self, now: datetime) -> float | None:
        """Give the score sensor's value: the episode's peak while in alarm, else the latest."""
        return self.peak if self.alarm(now) and self.peak is not None else self.score

    def alarm(self, now: datetime) -> bool:
        """Whether the device is in alarm now (a snooze keeps it quiet).

        An absence alarm (silent, stuck) lasts until the device's next record; any other
        alarm is held for a while after the last alarming verdict.
        """
        if self.snoozed_until is not None and now < self.snoozed_until:
            return False
        return self.absence is not None or (self.alarm_until is not None and now < self.alarm_until)

    @property
    def found(self) -> bool:
        """Whether GIoT found the device itself (no option chose it): it may be forgotten."""
        return self.device_id is None or self.dynamic


@dataclass(slots=True)
class HubState:
    """Hub-level state shown by the hub entities and kept across restarts.

    ``last_data`` is when a batch was last scored: the no-data repair counts from it, across
    restarts too.

    Federation: ``federation_round`` is the round of the last task this hub answered ``ok``, at
    ``last_participation``; ``bytes_up`` / ``bytes_down`` are the frames of the last round (task
    and result) and the ``*_total`` ones every frame over the link since pairing.
    ``model_origin`` says where the scoring model came from ("local", "global round N").
    ``federation_status`` is the node link's own state (``FederationStatus``; the coordinator
    puts the user's choices before it) and ``federation_training`` whether a round's task runs.
    """

    model_version: str = ""
    model_origin: str = MODEL_ORIGIN_LOCAL
    last_training: datetime | None = None
    federation_round: int | None = None
    federation_paused: bool = False
    away_mode: bool = False
    training: bool = False
    last_data: datetime | None = None
    last_participation: datetime | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None
    bytes_up_total: int = 0
    bytes_down_total: int = 0
    federation_status: FederationStatus = FederationStatus.NOT_PAIRED
    federation_training: bool = False
