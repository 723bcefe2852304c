"""Size limits checked from headers before any tensor memory is allocated.

A lying shape header (say 100000x100000 with a 16-byte body) is refused by
arithmetic on the header alone, so a hostile or broken client cannot make a
worker or an agent allocate gigabytes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Upper bounds on one message; the defaults fit every model in the zoo with room to spare."""

    max_payload_bytes: int = 4 * 1024 * 1024
    max_dims: int = 8
    max_elements: int = 1 << 20
    max_tensors: int = 8
    max_user_properties: int = 64


DEFAULT_LIMITS = Limits()
