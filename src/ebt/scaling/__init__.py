"""Scaling-law sweeps and fits (SPEC §7): `ebt scale run` and `ebt scale fit`."""
