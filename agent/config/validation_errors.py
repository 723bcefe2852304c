"""One way to say what a pydantic validation error means, for manifests, releases and heartbeats.

(Config files have a richer explanation with file:line:col, in agent/config/explain.py.)
"""

from __future__ import annotations

from pydantic import ValidationError


def describe(exc: ValidationError) -> str:
    """``where: what`` for each problem, ``;``-separated; unknown keys say so plainly."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
        f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}"
        for e in exc.errors()
    )
