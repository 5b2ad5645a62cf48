"""Byte counts for people: read a size a user typed, print one."""

from __future__ import annotations

import re

from hfbt.errors import HfbtError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(I?B?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'500G' → bytes. K/M/G/T/P and KiB.. are powers of 1024 (like du -h); KB, MB, GB.. of 1000."""
    m = _SIZE.match(text)
    if not m:
        raise HfbtError("BadRequest", f"cannot read size {text!r}: use e.g. 500G, 1.5T, 800GB or 1000000")
    number, unit, suffix = float(m.group(1)), m.group(2).upper(), m.group(3).upper()
    power = "KMGTP".find(unit) + 1 if unit else 0
    base = 1000 if suffix == "B" and unit else 1024
    return int(number * base**power)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
