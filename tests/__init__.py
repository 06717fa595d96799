"""Tests for GIoT."""
