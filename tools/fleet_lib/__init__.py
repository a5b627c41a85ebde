"""Guardia test fleet: N simulated SSH target nodes on 127.0.0.1 (see docs/TESTING.md)."""
