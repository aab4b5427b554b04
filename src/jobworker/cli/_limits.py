"""Limits as users write them: ``--cpu 0.5 --memory 256M --io-write 10M --pids 100``.

The one parser of limit values on the command line; ``run`` and ``start`` share it through
``limit_options`` in ``_options.py``.

- Sizes are binary, as docker and systemd read them: ``K``, ``M``, ``G``, ``T`` (1K =
  1024), case-insensitive, optionally followed by ``i`` and/or ``B`` (``256M``, ``256Mi``,
  ``256MiB`` and ``256mb`` are the same); a bare number is bytes.  With a suffix a
  fraction is allowed (``1.5G``), rounded down to whole bytes.
- Rates are sizes per second; a trailing ``/s`` may be written (``10M/s``).
- CPU is a number of cores (``0.5``: half of one core; ``2``: two cores).
- pids is a whole number of tasks.

Only the syntax is checked here.  Whether a value is in range (memory of at least 1 MiB,
cpu of at least 0.01, an io path on a block device) is the library's to say, at start and
before anything runs, so those bounds have one home.
"""

from __future__ import annotations

import re
from decimal import Decimal

__all__ = ["format_size", "parse_cpu", "parse_pids", "parse_rate", "parse_size"]

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?|\.\d+)(?:(?P<unit>[kmgt])i?)?b?", re.IGNORECASE)
_CPU = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_INTEGER = re.compile(r"\d+")


def parse_size(text: str) -> int:
    """Bytes from ``"256M"``, ``"1.5G"``, ``"4096"``; ValueError saying why not."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(
            f"{text!r} is not a size: write bytes, or a number followed by K, M, G or T"
            " (binary: 1K = 1024)"
        )
    number, unit = m["number"], (m["unit"] or "").lower()
    if not unit and "." in number:
        raise ValueError(f"{text!r} is not a whole number of bytes (write 1.5K, not 1536.5)")
    return int(Decimal(number) * _UNITS[unit])


def parse_rate(text: str) -> int:
    """Bytes per second from ``"10M"`` or ``"10M/s"``."""
    stripped = text.strip()
    if stripped.lower().endswith("/s"):
        stripped = stripped[:-2]
    try:
        return parse_size(stripped)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a rate: write bytes per second, or a number followed by K, M,"
            " G or T (binary: 1K = 1024), as in 10M or 10M/s"
        ) from None


def parse_cpu(text: str) -> float:
    """Cores from ``"0.5"`` or ``"2"``."""
    if _CPU.fullmatch(text.strip()) is None:
        raise ValueError(f"{text!r} is not a number of cores (write 0.5 for half a core)")
    return float(text)


def parse_pids(text: str) -> int:
    if _INTEGER.fullmatch(text.strip()) is None:
        raise ValueError(f"{text!r} is not a whole number of tasks")
    return int(text)


def format_size(n: int) -> str:
    """``n`` bytes the way ``parse_size`` reads them back: ``256M``, ``1.5G``, ``512``."""
    for unit in "TGMK":
        scale = _UNITS[unit.lower()]
        if n >= scale:
            value = n / scale
            text = f"{value:.1f}".removesuffix(".0") if value < 100 else f"{value:.0f}"
            return f"{text}{unit}"
    return str(n)
