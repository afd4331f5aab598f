"""Probes: one-off measurements in a real browser or on real query plans."""
