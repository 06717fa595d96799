"""Tests that run inside a real Home Assistant (Python 3.14 environment)."""
