"""Go's text formatting where Ollama's answers show it: ``%v`` / ``%#v`` of JSON-decoded values, Modelfile quoting.

Ollama decodes stored parameters into ``map[string]any``, so every JSON number is a float64 and prints the way
``strconv.FormatFloat(x, 'g', -1, 64)`` does (``40``, ``0.7``, ``1e+06``); strings under ``%#v`` print as
``strconv.Quote`` does. tests/test_standin.py checks these against the Go toolchain when it is installed.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
            '"': '\\"', "\\": "\\\\"}


def go_float(x: float) -> str:
    """strconv.FormatFloat(x, 'g', -1, 64): shortest digits; exponent form when the exponent is < -4 or >= 6."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    sign, digits, exp = Decimal(repr(float(x))).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    exp += len(digits) - len(ds)  # dropped trailing zeros move into the exponent
    dp = len(ds) + exp  # position of the decimal point relative to the digit string
    e = dp - 1
    neg = "-" if sign else ""
    # shortest formatting uses an exponent-switch precision of 6 (Go's strconv: "if shortest { eprec = 6 }").
    if e < -4 or e >= 6:
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{neg}{mant}e{'-' if e < 0 else '+'}{abs(e):02d}"
    if dp <= 0:
        return f"{neg}0.{'0' * -dp}{ds}"
    if dp >= len(ds):
        return f"{neg}{ds}{'0' * (dp - len(ds))}"
    return f"{neg}{ds[:dp]}.{ds[dp:]}"


def go_quote(s: str) -> str:
    """strconv.Quote: Go-syntax double-quoted string; printable Unicode kept, the rest escaped."""
    out = ['"']
    for ch in s:
        c = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif c < 0x20 or c == 0x7F:
            out.append(f"\\x{c:02x}")
        elif ch == " " or ch.isprintable():
            out.append(ch)
        elif c < 0x10000:
            out.append(f"\\u{c:04x}")
        else:
            out.append(f"\\U{c:08x}")
    out.append('"')
    return "".join(out)


def go_v(value: Any, sharp: bool = False) -> str:
    """``%v`` (or ``%#v`` with ``sharp``) of a JSON-decoded value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return go_float(float(value))
    if isinstance(value, str):
        return go_quote(value) if sharp else value
    if value is None:
        return "<nil>" if not sharp else "interface {}(nil)"
    if isinstance(value, list):
        inner = (", " if sharp else " ").join(go_v(v, sharp) for v in value)
        return ("[]interface {}{" + inner + "}") if sharp else f"[{inner}]"
    return str(value)


def modelfile_quote(s: str) -> str:
    """parser.quote: quote only values with a newline or leading/trailing space; triple quotes if one has a \"."""
    if "\n" in s or s.startswith(" ") or s.endswith(" "):
        return f'"""{s}"""' if '"' in s else f'"{s}"'
    return s
