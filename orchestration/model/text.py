r"""Text fit to store: what a ledger (SQLite, PostgreSQL) and a terminal can encode.

A Python ``str`` may hold code points UTF-8 cannot encode: unpaired surrogates
(``"\ud800"``), which a script's or a vendor's JSON can carry as an escape. Stored as they
are, they make the write fail and take the transaction's other rows with it; printed, they
raise. ``storable`` replaces each with U+FFFD (a surrogate pair split into two code points is
joined again, not replaced) and says how many it replaced, so that the loss can be noted.
"""

from __future__ import annotations

__all__ = ["REPLACEMENT", "storable"]

REPLACEMENT = "\ufffd"


def storable(text: str) -> tuple[str, int]:
    """``text`` with its unpaired surrogates replaced by U+FFFD, and how many there were."""
    if text.isascii():
        return text, 0
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return text, 0
    repaired = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return repaired, repaired.count(REPLACEMENT) - text.count(REPLACEMENT)
