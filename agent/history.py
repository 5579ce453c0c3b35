"""The recent results of each check, in memory, for the status page and `/api/v1/results`.

The latest result is kept whole elsewhere (`LatestResults`); here each check keeps only the status
and the start time of its last `HISTORY_LENGTH` results, in a ring of 9 bytes per entry (an 8-byte
float in an `array`, a status byte in a `bytearray`), and when its status last changed: at 10 000
checks, ~4 MB in all (~0.4 KB per check with the objects' own overhead). Bounded per check by the
ring, and in total by the number of configured checks: a check removed from the config is
forgotten with its latest result. Nothing here survives a restart.
"""

from __future__ import annotations

from array import array
from typing import Any

from agent.model import CheckResult, Status

HISTORY_LENGTH = 30


class _Ring:
    __slots__ = ("changed_at", "count", "previous", "statuses", "times")

    def __init__(self) -> None:
        self.times = array("d", bytes(8 * HISTORY_LENGTH))
        self.statuses = bytearray(HISTORY_LENGTH)
        self.count = 0  # results seen (the newest is at (count - 1) % HISTORY_LENGTH)
        self.changed_at = 0.0  # the start of the first result with the current status
        self.previous: int | None = None  # the status before that change; None: no change seen

    def add(self, started_at: float, status: int) -> None:
        if self.count == 0:
            self.changed_at = started_at
        else:
            last = self.statuses[(self.count - 1) % HISTORY_LENGTH]
            if last != status:
                self.previous, self.changed_at = last, started_at
        i = self.count % HISTORY_LENGTH
        self.times[i] = started_at
        self.statuses[i] = status
        self.count += 1

    def entries(self) -> list[list[float | int]]:
        n = min(self.count, HISTORY_LENGTH)
        first = self.count - n
        return [
            [self.times[j % HISTORY_LENGTH], self.statuses[j % HISTORY_LENGTH]]
            for j in range(first, self.count)
        ]


class History:
    """Per check name: the last `HISTORY_LENGTH` (start time, status) pairs and the last status
    change. Not thread-safe: fed and read on the event loop."""

    def __init__(self) -> None:
        self._rings: dict[str, _Ring] = {}

    def add(self, result: CheckResult) -> None:
        ring = self._rings.get(result.check)
        if ring is None:
            ring = self._rings[result.check] = _Ring()
        ring.add(result.started_at, int(result.status))

    def forget(self, name: str) -> None:
        """Drop a check's history (its removal from the config). Safe for an unknown name."""
        self._rings.pop(name, None)

    def to_json(self, name: str) -> dict[str, Any]:
        """`{"history": [[started_at, status_code], …] oldest first, "last_change": {"at": …,
        "from": "OK"|…|null}}`; `from` is null until the status has changed once (then `at` is
        the first result's start). Empty for an unknown check."""
        ring = self._rings.get(name)
        if ring is None:
            return {"history": [], "last_change": None}
        before = None if ring.previous is None else Status(ring.previous).name
        return {"history": ring.entries(), "last_change": {"at": ring.changed_at, "from": before}}

    def __len__(self) -> int:
        return len(self._rings)
