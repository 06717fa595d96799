"""Benchmarks and evaluations, kept out of the Flower app bundle and out of the test suites.

``scripts/bench NAME`` runs ``python -m benchmarks.NAME`` in the server environment (Python 3.11);
``benchmarks/ha`` holds those that need a real Home Assistant (Python 3.14, ``scripts/bench ha-*``).
"""
