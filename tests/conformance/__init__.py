"""DERP relay conformance suite: docs/protocol.md §9, one test per check."""
