"""Constructor-argument checks that state the accepted range: ``"VisualGenomeDataModule: batch_size must be an
integer >= 1, got 0"``.

Data modules call these in ``__init__`` so that ``--print_config`` and the first second of a run reject a bad
setting, instead of a Python slice or a sampler silently reinterpreting it hours later. Each function returns
the value converted (``int`` / ``float`` / ``tuple``) so a caller can assign it directly.
"""

from __future__ import annotations

import math
import os
from numbers import Integral, Real
from typing import Any, Iterable, Sequence

__all__ = ["check_choice", "check_int", "check_path", "check_real", "check_strings", "check_triple"]


def _fail(owner: str, name: str, accepted: str, value: Any) -> ValueError:
    return ValueError(f"{owner}: {name} must be {accepted}, got {value!r}")


def check_int(owner: str, name: str, value: Any, low: int | None = None, high: int | None = None,
              optional: bool = False) -> int | None:
    """``value`` as an ``int`` in ``[low, high]`` (either bound may be None); None passes when ``optional``."""
    if value is None and optional:
        return None
    accepted = "an integer" + (f" in [{low}, {high}]" if low is not None and high is not None
                               else f" >= {low}" if low is not None else f" <= {high}" if high is not None else "")
    if optional:
        accepted += " (or null)"
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise _fail(owner, name, accepted, value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise _fail(owner, name, accepted, value)
    return int(value)


def check_real(owner: str, name: str, value: Any, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite ``float`` in the interval from ``low`` to ``high`` (open ends when ``*_open``)."""
    lo = "" if low is None else f"{'(' if low_open else '['}{low}"
    hi = "" if high is None else f"{high}{')' if high_open else ']'}"
    accepted = ("a finite number" + (f" in {lo}, {hi}" if low is not None and high is not None
                                     else f" {'>' if low_open else '>='} {low}" if low is not None
                                     else f" {'<' if high_open else '<='} {high}" if high is not None else ""))
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise _fail(owner, name, accepted, value)
    v = float(value)
    if low is not None and (v < low or (low_open and v == low)):
        raise _fail(owner, name, accepted, value)
    if high is not None and (v > high or (high_open and v == high)):
        raise _fail(owner, name, accepted, value)
    return v


def check_choice(owner: str, name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` when it is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise _fail(owner, name, "one of " + ", ".join(repr(c) for c in choices), value)
    return value


def check_triple(owner: str, name: str, value: Any, positive: bool = False) -> tuple[float, float, float]:
    """Three finite numbers (one per RGB channel), all > 0 when ``positive``: normalisation mean / std."""
    accepted = "three finite numbers (one per RGB channel)" + (", all > 0" if positive else "")
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise _fail(owner, name, accepted, value) from None
    if len(out) != 3 or not all(math.isfinite(v) and (v > 0 or not positive) for v in out):
        raise _fail(owner, name, accepted, value)
    return out  # type: ignore[return-value]


def check_strings(owner: str, name: str, value: Any, optional: bool = False, unique: bool = False) -> list[str] | None:
    """A non-empty list of non-empty strings (a single string is read as a list of one); duplicates are
    rejected when ``unique``, naming the repeated entry and its positions."""
    if value is None and optional:
        return None
    accepted = "a non-empty list of non-empty strings" + (", each listed once" if unique else "") + \
        (" (or null)" if optional else "")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(owner, name, accepted, value)
    if unique:
        first: dict[str, int] = {}
        for i, v in enumerate(value):
            if v in first:
                raise ValueError(f"{owner}: {name} lists {v!r} twice (positions {first[v]} and {i}); each entry must "
                                 "appear once: remove the repeat")
            first[v] = i
    return list(value)


def check_path(owner: str, name: str, value: Any, optional: bool = False) -> str | None:
    """A file or folder path (``str`` or ``os.PathLike``, not empty) as a ``str``; None passes when ``optional``.

    Only the form is checked: whether the path exists is for the reader to say, with what to download.
    """
    if value is None and optional:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise _fail(owner, name, "a file or folder path (a non-empty string)" + (" or null" if optional else ""), value)
    return value
