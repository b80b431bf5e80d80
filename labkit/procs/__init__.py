"""The lab's child processes: the relay and the load generator, started, watched and
stopped by pid (see README.md)."""
