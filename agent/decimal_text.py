"""Non-negative decimal integers from text a peer or a disk wrote.

``str.isdigit`` accepts '²', which ``int`` then refuses with a ValueError nobody expects after
the check; only ASCII digits are numbers here.
"""

from __future__ import annotations


def decimal(text: str) -> int | None:
    """The number ``text`` spells in ASCII digits, else None."""
    return int(text) if text.isascii() and text.isdigit() else None
