"""``python -m giot_server``: the ``giot-server`` command."""

import sys

from giot_server.cli import main

sys.exit(main())
