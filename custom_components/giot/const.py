"""Constants shared by the GIoT integration's modules."""

import logging
from typing import Final

DOMAIN: Final = "giot"
LOGGER = logging.getLogger(__package__)

CONF_NODE_HOST: Final = "node_host"
CONF_NODE_PORT: Final = "node_port"

ZEROCONF_TYPE: Final = "_giot._tcp.local."
