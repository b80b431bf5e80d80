"""Relay node keys and the mesh key, in the formats Tailscale's derper uses.

A node key is a Curve25519 private key, clamped as Go's key.NewNode does. Key files:
derper's JSON config ({"PrivateKey": "privkey:<64 hex>"}), or one line holding
"privkey:<64 hex>" or the bare 64 hex digits. A mesh key file (derper --mesh-psk-file)
holds 64 hex digits.
"""

import json
import re
from pathlib import Path

import nacl.bindings
import nacl.utils

KEY_LEN = 32
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class KeyFormatError(ValueError):
    """A key or key file is malformed; the message says what a valid one looks like."""


def clamp(raw: bytes) -> bytes:
    """Curve25519 clamping, so the stored key equals the scalar actually used."""
    k = bytearray(raw)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def generate_private_key() -> bytes:
    return clamp(nacl.utils.random(KEY_LEN))


def public_key(private_key: bytes) -> bytes:
    return nacl.bindings.crypto_scalarmult_base(private_key)


def parse_hex_key(text: str, what: str) -> bytes:
    """32 bytes from exactly 64 hex digits (surrounding whitespace ignored)."""
    text = text.strip()
    if not _HEX64.fullmatch(text):
        raise KeyFormatError(f"{what} must be exactly 64 hex digits, got {len(text)} characters")
    return bytes.fromhex(text)


def load_private_key(path: str | Path) -> bytes:
    """The node key in a derper config file or a one-line key file."""
    text = Path(path).read_text().strip()
    if text.startswith("{"):
        try:
            text = str(json.loads(text).get("PrivateKey", ""))
        except (json.JSONDecodeError, AttributeError):
            raise KeyFormatError(
                f"{path}: not a derper config (a JSON object with PrivateKey)"
            ) from None
    text = text.removeprefix("privkey:")
    return clamp(parse_hex_key(text, f"private key in {path}"))


def load_mesh_key(path: str | Path) -> bytes:
    return parse_hex_key(Path(path).read_text(), f"mesh key in {path}")
