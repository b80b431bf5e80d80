"""The compiled relay API: `from labkit.native import ffi, lib`.

Loads labkit._native, or labkit._native_asan when LABKIT_SANITIZE=1 (that module only
loads into a process whose LD_PRELOAD starts with gcc's libasan; labkit.relay.Relay and
`make test` arrange that for the processes they start).
"""

import os
from pathlib import Path
from types import ModuleType

_HOW_TO_BUILD = "run `make setup` in the repository, or labkit.build() in a notebook"


def sanitize_requested() -> bool:
    return os.environ.get("LABKIT_SANITIZE") == "1"


def _asan_runtime_loaded() -> bool:
    # /proc/self/maps rather than $LD_PRELOAD: what matters is what the loader did.
    return "/libasan.so" in Path("/proc/self/maps").read_text()


def _load() -> ModuleType:
    if sanitize_requested():
        if not _asan_runtime_loaded():
            # Importing anyway would make ASan abort the whole process, not raise.
            raise ImportError(
                "LABKIT_SANITIZE=1 needs the ASan runtime preloaded: start python with "
                "LD_PRELOAD=\"$(gcc -print-file-name=libasan.so) "
                "$(gcc -print-file-name=libubsan.so)\" (labkit.relay.Relay does this for relays)"
            )
        try:
            from labkit import _native_asan as mod
        except ImportError as e:
            raise ImportError(
                f"labkit._native_asan is not built or does not load ({e}): run `make setup`, "
                "or labkit.build(sanitize=True) in a notebook"
            ) from e
        return mod
    try:
        from labkit import _native as mod
    except ImportError as e:
        raise ImportError(
            f"labkit._native is not built or does not load ({e}): {_HOW_TO_BUILD}"
        ) from e
    return mod


_mod = _load()
ffi = _mod.ffi
lib = _mod.lib

__all__ = ["ffi", "lib", "sanitize_requested"]


def last_error() -> str:
    """The detail of the most recent native failure (lk_last_error): read it on the thread
    that just failed, before anything else can fail."""
    return ffi.string(lib.lk_last_error()).decode(errors="replace")


def error_text(rc: int) -> str:
    """`<lk_strerror(rc)>: <detail>` for an lk_error code just returned. A config check's
    detail (one "field<TAB>why<TAB>fix" line per problem) is written out as sentences."""
    from labkit.problems import python_text

    lines = []
    for line in last_error().split("\n"):
        parts = line.split("\t")
        if len(parts) == 3:
            field, why, fix = parts
            line = f"{field} {why}" + (f": {python_text(fix)}" if fix else "")
        lines.append(line)
    return f"{ffi.string(lib.lk_strerror(rc)).decode()}: " + "; ".join(lines)
