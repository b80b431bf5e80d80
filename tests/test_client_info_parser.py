"""The ClientInfo JSON decoder (native/src/client_info.c).

The expected verdicts are what Go's encoding/json gives when derper unmarshals into
derp.ClientInfo (docs/protocol.md §4.4, §9 item 14): a strict RFC 8259 parse of the
whole input, an object or null at the top, case-insensitive keys, unknown keys skipped,
Go's type rules per field, and meshKey as exactly 64 hex digits.
"""

from typing import Any

import pytest

from labkit.native import ffi, lib

MESH = bytes(range(0xA0, 0xC0))


def decode(text: str | bytes) -> Any:
    """The decoded struct, or None when the parser refuses the input."""
    raw = text.encode() if isinstance(text, str) else text
    out = ffi.new("lk_client_info *")
    rc = lib.lk_client_info_parse(raw, len(raw), out)
    assert rc in (lib.LK_OK, lib.LK_ERR_CONFIG)
    return out if rc == lib.LK_OK else None


def fields(text: str | bytes) -> tuple[int, int, int, int]:
    out = decode(text)
    assert out is not None, f"refused {text!r}"
    return out.version, out.can_ack_pings, out.is_prober, out.has_mesh_key


def refused(text: str | bytes) -> bool:
    return decode(text) is None


# ---- accepted documents -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", (0, 0, 0, 0)),
        ("null", (0, 0, 0, 0)),
        (" \t\r\n{ }\n", (0, 0, 0, 0)),
        ("  null  ", (0, 0, 0, 0)),
        ('{"version":2,"CanAckPings":true}', (2, 1, 0, 0)),
        ('{"Version":2}', (2, 0, 0, 0)),
        ('{"VERSION":2,"canackpings":true,"isprober":true}', (2, 1, 1, 0)),
        ('{"version":2,"CanAckPings":false,"IsProber":true,"AppName":"probe"}', (2, 0, 1, 0)),
        ('{"version":-0}', (0, 0, 0, 0)),
        ('{"version":9223372036854775807}', (2**63 - 1, 0, 0, 0)),
        ('{"version":-9223372036854775808}', (-(2**63), 0, 0, 0)),
        ('{"version":1,"version":3}', (3, 0, 0, 0)),
        ('{"CanAckPings":true,"canackpings":false}', (0, 0, 0, 0)),
        ('{"version":2,"version":null}', (2, 0, 0, 0)),
        (
            '{"version":null,"CanAckPings":null,"IsProber":null,"meshKey":null,"AppName":null}',
            (0, 0, 0, 0),
        ),
        ('{"ver\\u0073ion":7}', (7, 0, 0, 0)),
        ('{"\\u0056ERSION":7}', (7, 0, 0, 0)),
        ('{"I\u017fProber":true}', (0, 0, 1, 0)),  # U+017F folds to S in Go
        ('{"I\\u017fProber":true}', (0, 0, 1, 0)),
        ('{"CanAc\u212aPings":true}', (0, 1, 0, 0)),  # KELVIN SIGN folds to K
        ('{"version ":5}', (0, 0, 0, 0)),  # not the same key
        ('{"":1,"versions":5,"vers":5}', (0, 0, 0, 0)),
        ('{"AppName":"a\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00"}', (0, 0, 0, 0)),
        ('{"AppName":"\u00e9\U0001f600"}', (0, 0, 0, 0)),
    ],
)
def test_accepted(text: str, expected: tuple[int, int, int, int]) -> None:
    assert fields(text) == expected


@pytest.mark.parametrize(
    "value",
    [
        "1",
        "-1.5e-3",
        "0.0",
        "1E+9",
        '"s"',
        '""',
        "true",
        "false",
        "null",
        "[]",
        "{}",
        '[1,"two",{"three":[3,{"x":null}]},[],[[]],true,false,null,-0.5]',
        '{"a":{"b":{"c":[{"d":"e"}]}},"version":"not-this-one"}',
        '"\\u00e9\\ud83d\\ude00\\\\\\""',
        '"\\ud800"',
        '"\\udc00"',
        '"\\ud800\\u0041"',
        '"\\ud800\\ud800"',
        '"\\udbff\\udfff"',
    ],
)
def test_unknown_keys_with_any_value_are_skipped(value: str) -> None:
    assert fields(f'{{"x":{value},"version":2,"Extra" : {value} , "CanAckPings":true}}') == (
        2,
        1,
        0,
        0,
    )


def test_invalid_utf8_is_not_an_error() -> None:
    # Go replaces invalid UTF-8 with U+FFFD instead of failing.
    assert fields(b'{"AppName":"\xff\xfe","\xc3":1,"version":2}') == (2, 0, 0, 0)


def test_typical_tailscaled_and_mesh_peer() -> None:
    assert fields('{"version":2,"CanAckPings":true}') == (2, 1, 0, 0)
    out = decode(f'{{"meshKey":"{MESH.hex()}","version":2,"CanAckPings":false}}')
    assert (out.version, out.can_ack_pings, out.has_mesh_key) == (2, 0, 1)
    assert bytes(out.mesh_key) == MESH


# ---- meshKey ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hex_text",
    [
        MESH.hex(),
        MESH.hex().upper(),
        "".join(c.upper() if i % 3 else c for i, c in enumerate(MESH.hex())),
    ],
)
def test_mesh_key_decoded(hex_text: str) -> None:
    out = decode(f'{{"meshKey":"{hex_text}"}}')
    assert out.has_mesh_key == 1
    assert bytes(out.mesh_key) == MESH


def test_mesh_key_key_case_and_escapes() -> None:
    escaped = "".join(f"\\u{ord(c):04x}" for c in MESH.hex())
    for text in (
        f'{{"MESHKEY":"{MESH.hex()}"}}',
        f'{{"meshKey":"{escaped}"}}',
        f'{{"mesh\u212aey":"{MESH.hex()}"}}',
    ):
        out = decode(text)
        assert (out.has_mesh_key, bytes(out.mesh_key)) == (1, MESH), text


def test_mesh_key_all_zero_and_all_f() -> None:
    assert bytes(decode('{"meshKey":"' + "0" * 64 + '"}').mesh_key) == bytes(32)
    assert bytes(decode('{"meshKey":"' + "F" * 64 + '"}').mesh_key) == b"\xff" * 32


def test_mesh_key_null_keeps_earlier_value() -> None:
    out = decode(f'{{"meshKey":"{MESH.hex()}","meshKey":null}}')
    assert (out.has_mesh_key, bytes(out.mesh_key)) == (1, MESH)


def test_mesh_key_last_wins() -> None:
    out = decode(f'{{"meshKey":"{"0" * 64}","meshKey":"{MESH.hex()}"}}')
    assert bytes(out.mesh_key) == MESH


@pytest.mark.parametrize(
    "value",
    [
        '""',
        '"0123456789"',
        f'"{MESH.hex()[:-1]}"',
        f'"{MESH.hex()}0"',
        f'"{MESH.hex()}00"',
        f'"{MESH.hex()[:-1]}g"',
        f'"{MESH.hex()[:-1]} "',
        f'" {MESH.hex()[1:]}"',
        f'"0x{MESH.hex()[2:]}"',
        f'"{MESH.hex()[:-1]}\u0660"',
        "5",
        "true",
        "[]",
        "{}",
        f'["{MESH.hex()}"]',
    ],
)
def test_mesh_key_refused(value: str) -> None:
    assert refused(f'{{"meshKey":{value}}}')


# ---- wrong types for known fields (Go: UnmarshalTypeError) ----------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"version":2.5}',
        '{"version":2.0}',
        '{"version":1e2}',
        '{"version":1E0}',
        '{"version":"2"}',
        '{"version":true}',
        '{"version":[]}',
        '{"version":{}}',
        '{"version":9223372036854775808}',
        '{"version":-9223372036854775809}',
        '{"version":99999999999999999999999}',
        '{"CanAckPings":1}',
        '{"CanAckPings":"true"}',
        '{"IsProber":0}',
        '{"IsProber":[]}',
        '{"AppName":5}',
        '{"AppName":true}',
        '{"AppName":["a"]}',
        '{"AppName":{}}',
    ],
)
def test_wrong_types_refused(text: str) -> None:
    assert refused(text)


# ---- not a ClientInfo at all ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b" ",
        b"\n\t ",
        b"hello",
        b"[]",
        b"[{}]",
        b'"{}"',
        b"2",
        b"true",
        b"false",
        b"nul",
        b"nulll",
        b"Null",
        b"NULL",
        b"\xef\xbb\xbf{}",
    ],
)
def test_not_an_object_refused(text: bytes) -> None:
    assert refused(text)


@pytest.mark.parametrize(
    "text",
    [
        "{} x",
        "{}}",
        "{}{}",
        "null null",
        "{},",
        "{} \x00",
        "{}\x00",
        "{}/",
        '{"version":2}garbage',
        "{} //comment",
    ],
)
def test_trailing_garbage_refused(text: str) -> None:
    assert refused(text)


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "{}{",
        '{"version"',
        '{"version":',
        '{"version":2',
        '{"version":2,',
        '{"a"}',
        '{"a":}',
        "{,}",
        '{"a":1,}',
        '{"a":1 "b":2}',
        '{"a" 1}',
        "{'a':1}",
        "{a:1}",
        '{"a":[1,]}',
        '{"a":[,1]}',
        '{"a":[1 2]}',
        '{"a":{"b"}}',
        '{"a":{"b":1,}}',
        '{"a":[}',
        '{"a":{]}',
        '{"a":[1}',
        '{"a":{"b":1]}',
        '{"a":]',
        '{"a":NaN}',
        '{"a":Infinity}',
        '{"a":-Infinity}',
        '{"a":+1}',
        '{"a":01}',
        '{"a":-01}',
        '{"a":.5}',
        '{"a":1.}',
        '{"a":1e}',
        '{"a":1e+}',
        '{"a":-}',
        '{"a":0x10}',
        '{"a":1.5.5}',
        '{"a":tru}',
        '{"a":True}',
        '{"a":nulls}',
        '{"a":undefined}',
        '{"a":"unterminated}',
        '{"a":"\\x41"}',
        '{"a":"\\u12"}',
        '{"a":"\\u12g4"}',
        '{"a":"\\U0041"}',
        '{"a":"\\',
        '{"a":"\\"}',
        '{"a":"\\ud800\\"}',
        '{"a":"\\\'"}',
        '{"a":"tab\there"}',
        '{"a":"new\nline"}',
        '{"a":"nul\x00"}',
        '{"a\x01":1}',
        '{"a":1}/*c*/',
        '{"a":1,"b":2,}',
        '{"version":2 /*c*/}',
        "{\x0b}",
        "{\x0c}",
        "{\u00a0}",
    ],
)
def test_syntax_errors_refused(text: str) -> None:
    assert refused(text)


def test_syntax_error_inside_ignored_value_still_refused() -> None:
    assert refused('{"version":2,"x":[1,2,{"y":tru}]}')
    assert refused('{"version":2,"x":"\\q"}')


# ---- nesting ---------------------------------------------------------------------------------


def nested(depth: int) -> str:
    """An object whose one unknown value nests `depth` containers (alternating [ and {)."""
    opens = "".join("[" if i % 2 == 0 else '{"k":' for i in range(depth))
    closes = "".join("]" if i % 2 == 0 else "}" for i in reversed(range(depth)))
    return '{"x":' + opens + "0" + closes + ',"version":2}'


def test_moderate_nesting_accepted() -> None:
    assert fields(nested(32)) == (2, 0, 0, 0)


def test_depth_limit_is_64_containers_including_the_top() -> None:
    assert fields(nested(63)) == (2, 0, 0, 0)
    assert refused(nested(64))


@pytest.mark.parametrize(
    "text",
    [
        "[" * 10_000,
        "{" * 10_000,
        '{"x":' + "[" * 10_000,
        '{"x":' + "[" * 10_000 + "]" * 10_000 + "}",
        '{"x":' + '{"a":' * 10_000 + "1" + "}" * 10_001,
        "[" * 1_000_000,
    ],
)
def test_deep_nesting_refused_without_crash(text: str) -> None:
    assert refused(text)


# ---- the output struct -------------------------------------------------------------------------


def test_output_untouched_on_failure() -> None:
    out = ffi.new("lk_client_info *")
    out.version = 77
    out.has_mesh_key = 1
    out.mesh_key = MESH
    raw = f'{{"version":2,"meshKey":"{"0" * 64}","CanAckPings":1}}'.encode()
    assert lib.lk_client_info_parse(raw, len(raw), out) == lib.LK_ERR_CONFIG
    assert (out.version, out.has_mesh_key, bytes(out.mesh_key)) == (77, 1, MESH)


def test_output_reset_to_defaults_on_success() -> None:
    out = ffi.new("lk_client_info *")
    out.version = 77
    out.can_ack_pings = 1
    out.is_prober = 1
    out.has_mesh_key = 1
    out.mesh_key = MESH
    assert lib.lk_client_info_parse(b"{}", 2, out) == lib.LK_OK
    assert (out.version, out.can_ack_pings, out.is_prober, out.has_mesh_key) == (0, 0, 0, 0)
    assert bytes(out.mesh_key) == bytes(32)


def test_length_bounds_the_input() -> None:
    # The parser must not read past len: the same bytes with a shorter length are cut.
    raw = b'{"version":2}'
    out = ffi.new("lk_client_info *")
    assert lib.lk_client_info_parse(raw, len(raw) - 1, out) == lib.LK_ERR_CONFIG
    buf = ffi.from_buffer(raw + b"xyz")
    assert lib.lk_client_info_parse(buf, len(raw), out) == lib.LK_OK
    assert out.version == 2
