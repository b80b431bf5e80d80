"""Write the seed corpus of fuzz_session (native/fuzz/corpus/session/).

    python native/fuzz/session_seeds.py

Each seed is a small scenario in the harness's input language (see the comment at the
top of fuzz_session.c): which connections exist, then client actions. libFuzzer mutates
from these; they cover routing, duplicates, watchers, ClosePeer, the fresh handshake,
both io models and the timers, so coverage starts deep instead of at the header.
"""

from pathlib import Path

OUT = Path(__file__).parent / "corpus" / "session"

RAW, SEND, FWD, CTRL, DELIVER, EOF, WRITABLE, BLOCK, PASS, TIME, PASS_ALL, IOERR = range(12)
ADOPTED, MESH, FRESH = 0, 2, 3
PLAIN, MESH_OK, MESH_BAD, NO_PREFIX = range(4)


def header(workers: int = 1, completion: bool = False, coalesce: bool = False,
           conns: int = 2) -> bytes:
    return bytes([(workers - 1) | completion << 2 | coalesce << 3 | (conns - 1) << 4])


def conn(key: int, kind: int = ADOPTED, variant: int = PLAIN, flag: bool = False) -> bytes:
    return bytes([key | kind << 3 | variant << 5 | flag << 7])


def op(code: int, idx: int = 0, *args: int) -> bytes:
    return bytes([code | idx << 4, *args])


def send(i: int, dst_key: int, size: int, disco: bool = False) -> bytes:
    return op(SEND, i, dst_key | disco << 7, size) + op(DELIVER, i, 0)


def seeds() -> dict[str, bytes]:
    s: dict[str, bytes] = {}
    for w in (1, 2, 3):
        for completion in (False, True):
            tag = f"w{w}-{'cq' if completion else 'rd'}"
            h = header(w, completion, conns=2)
            s[f"pair-{tag}"] = (h + conn(0) + conn(1) + send(0, 1, 100) + op(PASS_ALL)
                                + op(WRITABLE, 1, 0) + send(1, 0, 244) + op(PASS_ALL)
                                + op(WRITABLE, 0, 0) + op(EOF, 0) + op(PASS_ALL))
            h = header(w, completion, coalesce=True, conns=3)
            s[f"dups-{tag}"] = (h + conn(0) + conn(0) + conn(1) + send(2, 0, 50)
                                + op(PASS_ALL) + send(0, 1, 10) + op(PASS_ALL) + send(2, 0, 50)
                                + op(PASS_ALL) + op(EOF, 0) + op(PASS_ALL) + op(EOF, 1)
                                + op(PASS_ALL) + op(WRITABLE, 2, 0))
            h = header(w, completion, conns=3)
            s[f"watch-{tag}"] = (h + conn(2, MESH) + conn(0) + conn(1)
                                 + op(CTRL, 0, 1) + op(DELIVER, 0, 0) + op(PASS_ALL)
                                 + send(1, 2, 20) + op(EOF, 1) + op(PASS_ALL)
                                 + op(CTRL, 0, 2 | 1 << 3) + op(DELIVER, 0, 0) + op(PASS_ALL)
                                 + op(FWD, 0, 3 | 1 << 3, 30) + op(DELIVER, 0, 0)
                                 + op(PASS_ALL) + op(WRITABLE, 0, 0))
            s[f"fresh-{tag}"] = (header(w, completion, conns=4)
                                 + conn(0, FRESH, PLAIN) + conn(1, FRESH, MESH_OK)
                                 + conn(2, FRESH, MESH_BAD) + conn(3, FRESH, PLAIN, True)
                                 + b"".join(op(DELIVER, i, 7) * 30 for i in range(4))
                                 + op(PASS_ALL) + send(0, 1, 62, True) + op(PASS_ALL)
                                 + op(CTRL, 1, 1) + op(DELIVER, 1, 0) + op(PASS_ALL)
                                 + send(3, 5, 62, True) + send(3, 5, 62, True)
                                 + op(PASS_ALL) + op(WRITABLE, 1, 0))
            s[f"slow-{tag}"] = (header(w, completion, conns=3) + conn(0) + conn(1) + conn(2)
                                + op(BLOCK, 1) + op(PASS_ALL)
                                + (op(SEND, 0, 1, 250) + op(SEND, 2, 1, 100)) * 12
                                + op(DELIVER, 0, 0) + op(DELIVER, 2, 0) + op(PASS_ALL)
                                + op(TIME, 0, 130) + op(PASS_ALL) + send(0, 2, 5)
                                + op(TIME, 0, 200) + op(PASS_ALL) + op(WRITABLE, 2, 0))
    s["oversize-frames"] = (header(1, conns=2) + conn(0) + conn(1)
                            + op(CTRL, 0, 7 | 3 << 3) + op(DELIVER, 0, 3) + op(DELIVER, 0, 0)
                            + send(1, 0, 247) + op(CTRL, 1, 0 | 6 << 3) + op(DELIVER, 1, 0))
    s["raw-http"] = (header(2, conns=2) + conn(0, FRESH, NO_PREFIX) + conn(1)
                     + op(RAW, 0, 62) + b"GET /derp HTTP/1.1\r\nUpgrade: DERP\r\n"
                     b"Connection: Upgrade\r\n\r\n"[:62] + op(DELIVER, 0, 0)
                     + op(RAW, 0, 6) + b"\x02\x00\x00\x00\x38\x00" + op(DELIVER, 0, 0)
                     + op(TIME, 0, 140) + op(PASS_ALL))
    s["unknown-frames"] = (header(1, conns=2) + conn(0) + conn(1)
                           + b"".join(op(CTRL, 0, 5 | k << 3) for k in range(32))
                           + op(CTRL, 0, 0) + op(DELIVER, 0, 1) * 40 + op(DELIVER, 0, 0)
                           + op(PASS_ALL))
    return s


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (OUT / name).write_bytes(data)
    print(f"wrote {len(seeds())} seeds to {OUT}")


if __name__ == "__main__":
    main()
