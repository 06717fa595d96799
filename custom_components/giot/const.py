"""Constants shared by the GIoT integration's modules."""

import logging
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Final

DOMAIN: Final = "giot"
LOGGER = logging.getLogger(__package__)

CONF_NODE_HOST: Final = "node_host"
CONF_NODE_PORT: Final = "node_port"
# The pairing token `giot-node pair` prints; it never crosses the link (node_protocol.proof).
CONF_NODE_TOKEN: Final = "node_token"
# The aggregation server's model-signing key (Ed25519, hex), learnt from the node at pairing:
# every global model must carry its signature ("" = the node was given none: unsigned accepted).
CONF_SERVER_KEY: Final = "server_key"

# The small base model shipped with the integration (scripts/build-base-model): a hub without a
# model of its own starts from it, known-attack head included.
BASE_MODEL_DIR: Final = Path(__file__).parent / "base_model"

ZEROCONF_TYPE: Final = "_giot._tcp.local."
DEFAULT_NODE_PORT: Final = 9093
NODE_PATH: Final = "/giot"

# Options (the options flow writes them; the coordinator reads them at setup).
CONF_DEVICES: Final = "devices"
CONF_AREAS: Final = "areas"
CONF_LABELS: Final = "labels"
CONF_NETFLOW_PORT: Final = "netflow_port"
CONF_ZEEK_PATH: Final = "zeek_path"
CONF_SENSITIVITY: Final = "sensitivity"
CONF_FEDERATION: Final = "federation"
CONF_RETENTION_DAYS: Final = "retention_days"

DEFAULT_RETENTION_DAYS: Final = 30
# Off until a GIoT node is paired (nothing to federate with). Pairing turns it on unless the
# options hold an explicit False (the options flow keeps no value for an unpaired entry whose
# user left the default: that was no choice yet).
DEFAULT_FEDERATION: Final = False


class Sensitivity(StrEnum):
    """How readily a surprising observation becomes an alarm."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


DEFAULT_SENSITIVITY: Final = Sensitivity.MEDIUM

# Scores are nats over the device's calibrated threshold (0 = the engine's own bar). The
# sensitivity moves that bar; away mode lowers it, since a quiet home is expected.
SENSITIVITY_OFFSET: Final = {
    Sensitivity.LOW: 4.0,
    Sensitivity.MEDIUM: 0.0,
    Sensitivity.HIGH: -3.0,
}
AWAY_FLOW_OFFSET: Final = -2.0
AWAY_EVENT_OFFSET: Final = -6.0


class AlertType(StrEnum):
    """Event types of the alert event entities (automations trigger on these)."""

    PORT_SCAN = "port_scan"
    C2_BEACON = "c2_beacon"
    FLOOD = "flood"
    UNUSUAL_ACTIVITY = "unusual_activity"
    DEVICE_SILENT = "device_silent"
    STUCK_STATE = "stuck_state"
    NEW_DEVICE = "new_device"


class FederationStatus(StrEnum):
    """What federated participation is doing.

    The first three are the user's choices (the option, pairing, the pause switch); the others
    are the node link's state, ``training`` while a round's task is answered.
    """

    DISABLED = "disabled"
    NOT_PAIRED = "not_paired"
    PAUSED = "paused"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    TRAINING = "training"
    REAUTH_NEEDED = "reauth_needed"
    INCOMPATIBLE = "incompatible"
    UNREACHABLE = "unreachable"


# Model origin of a model trained on this hub alone (a global one is "global round N").
MODEL_ORIGIN_LOCAL: Final = "local"


ATTR_SEVERITY: Final = "severity"
ATTR_EXPLANATION: Final = "explanation"
ATTR_SCORE: Final = "score"
ATTR_DESCRIPTION: Final = "description"
ATTR_DEVICE: Final = "device"
ATTR_DURATION: Final = "duration"

# An alarm stays on this long after the last alarming verdict, and one device fires one event
# per alert type per hold, so a scan of a thousand flows is one alert, not a thousand.
ALARM_HOLD: Final = timedelta(minutes=10)
HOUSEKEEPING_INTERVAL: Final = timedelta(minutes=1)
# Absence (a device gone silent, a sensor stuck) can only be judged on a clock, not on a record.
ABSENCE_INTERVAL: Final = timedelta(minutes=1)
# Devices GIoT found on its own (network-only, or registry devices flows were attributed to) are
# forgotten, entities and learnt state included, once unseen for the retention period; at most
# this many network-only devices exist at once (a sweep of spoofed LAN addresses must not make
# thousands of entities).
MAX_NETWORK_DEVICES: Final = 256
NO_DATA_AFTER: Final = timedelta(days=1)
SAVE_DELAY_S: Final = 60.0
BATCH_MAX: Final = 2048

HUB_KEY: Final = "hub"
