"""C strings for the config structs handed to the native module."""

import os
from typing import Any


def c_string(ffi: Any, keepalive: list[Any], s: str | None) -> Any:
    """`s` as a NUL-terminated char[] (NULL for None). The struct that points at it does
    not own it: the buffer goes into `keepalive`, which the caller holds for as long as
    the C side may read the struct."""
    if s is None:
        return ffi.NULL
    buf = ffi.new("char[]", os.fsencode(s))
    keepalive.append(buf)
    return buf
