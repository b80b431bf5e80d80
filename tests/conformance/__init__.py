"""DERP relay conformance suite: derp-protocol.md §14, one test per check."""
