"""The checks every API field, option and argument goes through: one message form for all.

    ConfigError: "<name> = <value> is not allowed; it must be <what is allowed>"

`name` is how the caller's reader knows the field ("steps", "model_args batch_size",
"think.step_size"); `field` (default: `name`) is the API field the error carries for the command
line to translate into its flag (`ebt.errors.EBTError.field`). Library code never names a flag.
Each check returns the value it passed, so a caller can check and assign in one line. Below
them, how a value read from a config file or an override string gets its field's type
(`check_type`, `parse_value`), for `ebt.config`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from ebt.errors import ConfigError


def _refuse(name: str, value: Any, allowed: str, field: str | None) -> ConfigError:
    return ConfigError(f"{name} = {value!r} is not allowed; it must be {allowed}", field=field or name)


def _unset(optional: bool, unset: str | None) -> str:
    return f" or left unset (None: {unset})" if optional and unset else " or left unset" if optional else ""


def check_int(name: str, value: Any, low: int, high: int | None = None, *, optional: bool = False,
              unset: str | None = None, note: str = "", field: str | None = None) -> int | None:
    """An integer (not a bool) in [low, high] (high None: no bound above); None too when `optional`,
    which the message explains as `unset` ("as trained"). `note` is appended to the message."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"in [{low}, {high}]" if high is not None else f"≥ {low}"
        raise _refuse(name, value, f"an integer {span}{_unset(optional, unset)}{note}", field)
    return value


def check_real(name: str, value: Any, low: float | None = None, high: float | None = None, *,
               low_open: bool = False, high_open: bool = False, optional: bool = False, unset: str | None = None,
               note: str = "", field: str | None = None) -> float | None:
    """A finite int or float (not a bool) within the bounds given (each closed unless `*_open`);
    None too when `optional`. `note` is appended to the message, e.g. " (0 = off)"."""
    if value is None and optional:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    above = low is None or (value > low if low_open else value >= low) if number else False
    below = high is None or (value < high if high_open else value <= high) if number else False
    if not (number and above and below):
        if low is not None and high is not None:
            span = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            span = f" {'>' if low_open else '≥'} {low:g}"
        elif high is not None:
            span = f" {'<' if high_open else '≤'} {high:g}"
        else:
            span = ""
        raise _refuse(name, value, f"a finite number{span}{note}{_unset(optional, unset)}", field)
    return value


def check_bool(name: str, value: Any, *, optional: bool = False, unset: str | None = None,
               field: str | None = None) -> bool | None:
    """True or False (not 0/1); None too when `optional`."""
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise _refuse(name, value, f"true or false{_unset(optional, unset)}", field)
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any], *, optional: bool = False,
                 unset: str | None = None, field: str | None = None) -> Any:
    """One of `choices`; None too when `optional`."""
    choices = tuple(choices)
    if value is None and optional:
        return None
    if isinstance(value, bool) or value not in choices:
        listed = ", ".join(map(repr, choices))
        raise _refuse(name, value, f"one of {listed}{_unset(optional, unset)}", field)
    return value


def check(name: str, value: Any, ok: bool, allowed: str, *, field: str | None = None) -> Any:
    """`value`, when `ok` (the caller's own test: a rule across fields, a divisibility); else the
    same ConfigError as the checks above, saying it must be `allowed`."""
    if not ok:
        raise _refuse(name, value, allowed, field)
    return value


# --- Values read from config files and override strings (`ebt.config`) ---------------------------


def json_type(value: Any) -> str:
    """How a JSON reader names a value's type ("an object", "an integer", …)."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "true/false", int: "an integer",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def check_type(key: str, value: Any, kind: type) -> Any:
    """A value read from config.json, checked against its field's type (an int is a float too)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
        raise ConfigError(f"{key} = {value!r} has the wrong type; it must be {names.get(kind, kind.__name__)}")
    return value


def parse_value(raw: str, kind: type, key: str) -> Any:
    """A command-line override's text (`--section.key=raw`) as a field of type `kind` (bool: also
    1/0, yes/no, on/off; int: also 1e3), or ConfigError naming `key`."""
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            f = float(raw)
            if not f.is_integer():
                raise ValueError
            return int(f)
        return kind(raw)
    except ValueError:
        allowed = {bool: "; it must be true or false (also 1/0, yes/no, on/off)", int: "; it must be an integer",
                   float: "; it must be a number"}
        raise ConfigError(f"{key} = {raw!r} is not a valid {kind.__name__}{allowed.get(kind, '')}") from None
