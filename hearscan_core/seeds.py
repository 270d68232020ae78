"""Seed lists as users type them: the one parser every command uses."""

from __future__ import annotations

from hearscan_core.errors import UserFacingError


def parse_seeds(text: str, flag: str = "--seeds") -> list[int]:
    """'0-9' -> [0..9]; '0,3,5' -> [0, 3, 5]; '4' -> [4]; sorted, without duplicates.  A reversed range,
    a negative seed or an empty list is an error naming the flag."""
    seeds: list[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise UserFacingError(f"{flag} {text!r}: use a range like 0-9, a list like 0,3,5, or one number") from None
    if not seeds or min(seeds) < 0:
        raise UserFacingError(f"{flag} {text!r}: give at least one non-negative seed")
    return sorted(dict.fromkeys(seeds))
