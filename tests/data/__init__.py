"""Tests for bdiff.data (a package so module names cannot clash with tests/eval etc.)."""
