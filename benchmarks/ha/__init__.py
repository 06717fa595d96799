"""Benchmarks in a real Home Assistant: pytest modules, run by ``scripts/bench ha-NAME``.

They are pytest modules because the Home Assistant test harness (``hass`` fixture) is the way to
start a real one in process; they sit outside ``testpaths`` so that no test run picks them up.
"""
