"""``python -m giot_node`` = ``giot-node``."""

from giot_node.cli import main

raise SystemExit(main())
