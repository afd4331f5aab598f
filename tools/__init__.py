"""Tooling beside the services: load test, fault run, benchmarks, probes.

It imports `services`; nothing under `services/` imports it. The `sightline` command reaches
`load` and `chaos` through the `sightline.commands` entry points (see pyproject.toml).
"""
