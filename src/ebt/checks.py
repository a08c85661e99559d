"""The checks every API field, option and argument goes through: one message form for all.

    ConfigError: "<name> = <value> is not allowed; it must be <what is allowed>"

`name` is how the caller's reader knows the field ("steps", "model_args batch_size",
"think.step_size"); `field` (default: `name`) is the API field the error carries for the command
line to translate into its flag (`ebt.errors.EBTError.field`). Library code never names a flag.
Each check returns the value it passed, so a caller can check and assign in one line.
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
