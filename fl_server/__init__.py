"""GIoT server side: Flower ServerApp/ClientApp, the GSFS strategy, simulation and benchmarks.

Runs in the Python 3.11 server environment (flwr, torch, transformers, ONNX Runtime); it imports the
engine as ``giot_engine`` so that Home Assistant is never needed here.
"""
