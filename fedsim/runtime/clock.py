"""The virtual clock: orders client rounds by simulated finish time.

A round of client c that starts at simulated time t finishes at t + cost_c / m_c, where cost_c
is the method's ``round_cost`` (work units: samples x forward-pass equivalents) and m_c the
client's speed multiplier. Events are popped in (time, client id) order, so ties are broken the
same way on every machine: the virtual mode is bit-for-bit reproducible whatever the load.
"""

from __future__ import annotations

import heapq


class VirtualClock:
    def __init__(self) -> None:
        self._events: list[tuple[float, int]] = []
        self.now = 0.0

    def schedule(self, client_id: int, finish_time: float) -> None:
        heapq.heappush(self._events, (finish_time, client_id))

    def pop(self) -> tuple[float, int]:
        finish_time, client_id = heapq.heappop(self._events)
        self.now = max(self.now, finish_time)
        return finish_time, client_id

    def upcoming(self, n: int) -> list[int]:
        """The clients of the next ``n`` events, in the order they will be popped."""
        return [client_id for _, client_id in heapq.nsmallest(n, self._events)]

    def peek(self) -> float | None:
        return self._events[0][0] if self._events else None

    def __len__(self) -> int:
        return len(self._events)
