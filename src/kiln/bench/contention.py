"""How much of the machine other processes (and the hypervisor) took while a measurement ran.

A timing taken while another process holds a core is not this artifact's speed: eager torch with 2
threads on 2 cores, one of them busy elsewhere, went from 0.85 ms to a flat 168 ms at batch 1 (its
threads spin-wait for each other). `kiln bench` therefore reads the kernel's CPU accounting
(``/proc/stat``, steal included) and its own process's CPU time around each measurement, and
re-measures or warns when others took more than a small share.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

MAX_SHARE = 0.10  # of all cores' time, taken by others or stolen, before a measurement is redone
BUSY_FIELDS = (0, 1, 2, 5, 6)  # user, nice, system, irq, softirq (guest time is inside user)
IDLE_FIELDS = (3, 4)  # idle, iowait
STEAL_FIELD = 7


@dataclass(frozen=True)
class Contention:
    """Shares of all cores' time during a measurement: used by other processes, stolen by the
    hypervisor. ``known`` is false where the kernel does not say (not Linux)."""

    others: float
    steal: float
    known: bool = True

    @property
    def total(self) -> float:
        return self.others + self.steal

    @property
    def contended(self) -> bool:
        return self.known and self.total > MAX_SHARE

    def describe(self) -> str:
        return (f"other processes took {self.others:.0%} of the CPUs and the hypervisor stole "
                f"{self.steal:.0%}")


@dataclass(frozen=True)
class _Snapshot:
    busy: int
    idle: int
    steal: int
    own: int  # this process's user + system time, all threads


def _snapshot() -> _Snapshot | None:
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        own = os.times()  # seconds, all threads of this process
    except (OSError, ValueError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return _Snapshot(busy=sum(fields[i] for i in BUSY_FIELDS),
                     idle=sum(fields[i] for i in IDLE_FIELDS), steal=fields[STEAL_FIELD],
                     own=round((own.user + own.system) * ticks))


def contention_between(before: _Snapshot | None, after: _Snapshot | None) -> Contention:
    if before is None or after is None:
        return Contention(0.0, 0.0, known=False)
    busy, steal = after.busy - before.busy, after.steal - before.steal
    total = busy + (after.idle - before.idle) + steal
    if total <= 0:
        return Contention(0.0, 0.0, known=False)
    others = max(0, busy - (after.own - before.own))
    return Contention(others / total, steal / total)


def watched(measure: Callable[[], T]) -> tuple[T, Contention]:
    """Run ``measure`` and say how contended the machine was meanwhile."""
    before = _snapshot()
    result = measure()
    return result, contention_between(before, _snapshot())


def idle_check(seconds: float = 0.5) -> Contention:
    """The machine's contention over ``seconds`` of this process sleeping."""
    return watched(lambda: time.sleep(seconds))[1]
