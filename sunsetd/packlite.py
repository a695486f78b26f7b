"""msgpack and JSON as `sunsetctl`'s one-shot commands need them, without importing msgpack (its package
imports datetime, struct and collections: 5 to 8 ms) or json (re and enum: 14 ms).

Each function gives exactly what the library would, or asks the library: `pack` is
`msgpack.packb(obj, use_bin_type=True)` byte for byte, `unpack` is `protocol.unpack` (it leaves an
ext type, trailing bytes or anything malformed to the real one, which then also says what is wrong),
and `dumps` is `json.dumps(obj, indent=indent, default=default)`. tests/test_sunsetctl_fast.py checks
each against the library over generated values.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


MAX_FRAME_BYTES = 1 << 20  # protocol.MAX_FRAME_BYTES


class _Unsupported(Exception):
    """Not for this module: the library decides."""


# ---- msgpack -------------------------------------------------------------------------------------------

def pack(obj: "Any") -> bytes:
    out: list[bytes] = []
    try:
        _pack(obj, out, 0)
    except _Unsupported:
        import msgpack

        return msgpack.packb(obj, use_bin_type=True)
    return b"".join(out)


def _pack(obj: "Any", out: list, depth: int) -> None:
    t = type(obj)
    if depth > 256:  # the library's own recursion limit is 511; near it, it decides
        raise _Unsupported
    if t is str:
        data = obj.encode("utf-8")  # a lone surrogate: UnicodeEncodeError, as from msgpack
        n = len(data)
        if n < 32:
            out.append(bytes((0xA0 | n,)))
        elif n < 0x100:
            out.append(bytes((0xD9, n)))
        elif n < 0x10000:
            out.append(b"\xda" + n.to_bytes(2, "big"))
        elif n < 0x100000000:
            out.append(b"\xdb" + n.to_bytes(4, "big"))
        else:
            raise _Unsupported
        out.append(data)
    elif t is int:
        if 0 <= obj < 0x80:
            out.append(bytes((obj,)))
        elif -32 <= obj < 0:
            out.append(bytes((obj & 0xFF,)))
        elif obj >= 0:
            for marker, size in ((0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8)):
                if obj < 1 << (8 * size):
                    out.append(bytes((marker,)) + obj.to_bytes(size, "big"))
                    return
            raise _Unsupported  # too large: the library raises its own OverflowError
        else:
            for marker, size in ((0xD0, 1), (0xD1, 2), (0xD2, 4), (0xD3, 8)):
                if obj >= -(1 << (8 * size - 1)):
                    out.append(bytes((marker,)) + obj.to_bytes(size, "big", signed=True))
                    return
            raise _Unsupported
    elif obj is None:
        out.append(b"\xc0")
    elif obj is True:
        out.append(b"\xc3")
    elif obj is False:
        out.append(b"\xc2")
    elif t is float:
        from _struct import pack as struct_pack

        out.append(b"\xcb" + struct_pack(">d", obj))
    elif t is dict:
        _head(len(obj), 0x80, 0xDE, out)
        for k, v in obj.items():
            _pack(k, out, depth + 1)
            _pack(v, out, depth + 1)
    elif t is list or t is tuple:
        _head(len(obj), 0x90, 0xDC, out)
        for v in obj:
            _pack(v, out, depth + 1)
    elif t is bytes:
        n = len(obj)
        if n < 0x100:
            out.append(bytes((0xC4, n)))
        elif n < 0x10000:
            out.append(b"\xc5" + n.to_bytes(2, "big"))
        elif n < 0x100000000:
            out.append(b"\xc6" + n.to_bytes(4, "big"))
        else:
            raise _Unsupported
        out.append(obj)
    else:
        raise _Unsupported  # subclasses, bytearray, ExtType, datetime...: the library's rules


def _head(n: int, fix: int, marker: int, out: list) -> None:
    if n < 16:
        out.append(bytes((fix | n,)))
    elif n < 0x10000:
        out.append(bytes((marker,)) + n.to_bytes(2, "big"))
    elif n < 0x100000000:
        out.append(bytes((marker + 1,)) + n.to_bytes(4, "big"))
    else:
        raise _Unsupported


def unpack(data: bytes, what: str) -> "Any":
    """`protocol.unpack(data, what)`: the value, or the same ProtocolError (from protocol itself)."""
    try:
        if len(data) <= MAX_FRAME_BYTES:  # a larger one is refused by protocol.unpack, in its words
            obj, at = _unpack(data, 0, 0)
            if at == len(data):
                return obj
    except (_Unsupported, IndexError, ValueError, TypeError, RecursionError):
        pass
    from sunsetd import protocol  # anything else: the library's answer, and its words for what is wrong

    return protocol.unpack(data, what)


_FIXED = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
_UINT = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_INT = {0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_CONTAINER = {0xDC: 2, 0xDD: 4, 0xDE: 2, 0xDF: 4}


def _unpack(data: bytes, at: int, depth: int) -> tuple:
    if depth > 256:
        raise _Unsupported
    b = data[at]
    at += 1
    if b < 0x80:
        return b, at
    if b >= 0xE0:
        return b - 0x100, at
    if 0xA0 <= b < 0xC0:
        n = b & 0x1F
        return _text(data, at, n), at + n
    if 0x90 <= b < 0xA0:
        return _list(data, at, b & 0x0F, depth)
    if 0x80 <= b < 0x90:
        return _map(data, at, b & 0x0F, depth)
    if b == 0xC0:
        return None, at
    if b == 0xC2:
        return False, at
    if b == 0xC3:
        return True, at
    size = _UINT.get(b)
    if size is not None:
        _need(data, at + size)
        return int.from_bytes(data[at:at + size], "big"), at + size
    size = _INT.get(b)
    if size is not None:
        _need(data, at + size)
        return int.from_bytes(data[at:at + size], "big", signed=True), at + size
    if b == 0xCB or b == 0xCA:
        from _struct import unpack_from

        size = 8 if b == 0xCB else 4
        _need(data, at + size)
        return unpack_from(">d" if size == 8 else ">f", data, at)[0], at + size
    size = _FIXED.get(b)
    if size is not None:
        _need(data, at + size)
        n = int.from_bytes(data[at:at + size], "big")
        at += size
        _need(data, at + n)
        return (data[at:at + n] if b < 0xD0 else _text(data, at, n)), at + n
    size = _CONTAINER.get(b)
    if size is not None:
        _need(data, at + size)
        n = int.from_bytes(data[at:at + size], "big")
        return (_list if b < 0xDE else _map)(data, at + size, n, depth)
    raise _Unsupported  # ext types (a Timestamp, an ExtType) and 0xc1: the library


def _need(data: bytes, end: int) -> None:
    if end > len(data):
        raise _Unsupported


def _text(data: bytes, at: int, n: int) -> str:
    _need(data, at + n)
    return data[at:at + n].decode("utf-8")


def _list(data: bytes, at: int, n: int, depth: int) -> tuple:
    if n > len(data) - at:
        raise _Unsupported
    out = []
    for _ in range(n):
        v, at = _unpack(data, at, depth + 1)
        out.append(v)
    return out, at


def _map(data: bytes, at: int, n: int, depth: int) -> tuple:
    if 2 * n > len(data) - at:
        raise _Unsupported
    out = {}
    for _ in range(n):
        k, at = _unpack(data, at, depth + 1)
        if type(k) is not str:  # msgpack's rules for other keys (bytes, ints, unhashable) are its own
            raise _Unsupported
        v, at = _unpack(data, at, depth + 1)
        out[k] = v
    return out, at


# ---- JSON ----------------------------------------------------------------------------------------------

def dumps(obj: "Any", indent: int | None = None, default: "Any" = str) -> str:
    """`json.dumps(obj, indent=indent, default=default)`. What msgpack decodes to, but for bytes and
    keys that are not strings, is done here; anything else, json does."""
    from _json import encode_basestring_ascii

    out: list[str] = []
    try:
        _dumps(obj, out, encode_basestring_ascii, indent, 0)
    except _Unsupported:
        import json

        return json.dumps(obj, indent=indent, default=default)
    return "".join(out)


def _dumps(obj: "Any", out: list, quote: "Any", indent: int | None, level: int) -> None:
    t = type(obj)
    if t is str:
        out.append(quote(obj))
    elif obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif t is int:
        out.append(int.__repr__(obj))
    elif t is float:
        if obj != obj:
            out.append("NaN")
        elif obj == float("inf"):
            out.append("Infinity")
        elif obj == -float("inf"):
            out.append("-Infinity")
        else:
            out.append(float.__repr__(obj))
    elif t is list or t is dict:
        if level > 200:
            raise _Unsupported
        if not obj:
            out.append("[]" if t is list else "{}")
            return
        if indent is None:
            inner, sep, close = "", ", ", ""
        else:
            inner = "\n" + " " * (indent * (level + 1))
            sep, close = "," + inner, "\n" + " " * (indent * level)
        out.append(("[" if t is list else "{") + inner)
        first = True
        if t is list:
            for v in obj:
                if not first:
                    out.append(sep)
                first = False
                _dumps(v, out, quote, indent, level + 1)
        else:
            for k, v in obj.items():
                if type(k) is not str:
                    raise _Unsupported
                if not first:
                    out.append(sep)
                first = False
                out.append(quote(k) + ": ")
                _dumps(v, out, quote, indent, level + 1)
        out.append(close + ("]" if t is list else "}"))
    else:
        raise _Unsupported  # bytes, and anything else default=str would turn into its str()
