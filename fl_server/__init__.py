"""GIoT server side: Flower ServerApp/ClientApp, the GSFS strategy and an in-process simulation.

Runs in the Python 3.11 server environment (flwr, torch, transformers, ONNX Runtime); it imports the
engine as the installed library ``giot_engine``, as Home Assistant does.
"""
