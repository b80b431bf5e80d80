"""Adversarial clients against every io mode, worker count and TLS setting."""
