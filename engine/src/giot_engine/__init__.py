"""GIoT engine: tokenizer, model, training, scoring and descriptions.

Runs inside Home Assistant (numpy only), inside the Flower simulation and in benchmarks, so that one
implementation serves all three. It must never import Home Assistant, torch, onnxruntime or flwr
(tests/engine/test_import_boundary.py enforces this), and it keeps to Python 3.11 syntax because the
server world runs on 3.11.
"""
