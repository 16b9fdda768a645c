"""The "did you mean" of every name lookup: one line naming the bad name, the closest match and the choices."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, allowed: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest allowed name, or ''."""
    close = difflib.get_close_matches(name, list(allowed), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def one_of(name: str, allowed: Iterable[str], what: str = "name") -> str:
    """`name` if it is allowed; otherwise a ValueError naming the choices."""
    allowed = list(allowed)
    if name in allowed:
        return name
    raise ValueError(f"unknown {what} '{name}'{did_you_mean(name, allowed)}; allowed: {', '.join(allowed)}")
