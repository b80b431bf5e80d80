"""Experiments: one run and sweeps of runs, their window figures, statistics, sweep files
and the run store (see README.md)."""
