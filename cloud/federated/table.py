"""The round table: one line per federated round, as ``fl serve``, ``fl simulate`` and ``fl status`` print it."""

from __future__ import annotations

from cloud.registry import RoundRecord

HEADER = (f"{'round':>5}  {'nodes':>5}  {'declined':>8}  {'dropped':>7}  {'samples':>7}  {'accuracy':>8}  "
          f"{'offload':>7}  {'seconds':>7}  release")


def pct(value: float | None) -> str:
    """A share as a percentage, or "-" where there is none."""
    return "-" if value is None else f"{value:.1%}"


def row(r: RoundRecord) -> str:
    """``accuracy``: the aggregate's on the cloud's test rows; ``offload``: what it needs for 0.99x the cloud's."""
    return (f"{r.round:>5}  {r.participants:>5}  {r.declined:>8}  {r.dropped:>7}  {r.examples:>7}  "
            f"{pct(r.accuracy):>8}  {pct(r.offload_rate):>7}  {r.seconds:>7.1f}  {r.release or ''}").rstrip()


def table(records: list[RoundRecord]) -> str:
    return "\n".join([HEADER, *map(row, records)])
