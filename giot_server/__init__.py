"""GIoT's aggregation server as one command: ``giot-server`` (see ``giot_server.cli``).

A local Flower SuperLink with TLS and SuperNode authentication, the GSFS ServerApp started through
``flwr run``, checkpoints, enrolment of home nodes, and a clean stop, with all state in one
directory. Not part of the app bundle (FAB) that ``flwr run`` ships to nodes: that is
``fl_server``.
"""
