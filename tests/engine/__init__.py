"""Tests of the numpy engine; they run in both environments (3.14 and 3.11)."""
