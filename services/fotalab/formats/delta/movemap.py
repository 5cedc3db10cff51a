"""Where the old image's contents moved to in the new one, for the relocating encodings.

``MoveMap`` is derived from the control stream itself (both sides compute it, so it costs no
bytes); ``OutsideMap`` covers addresses outside the image (RAM variables, data behind it),
which only the signer can learn from the pair, so it travels in the container header.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable

from .container import Control, zigzag


class MoveMap:
    """Old offset -> shift (new - old) derived from the long matches of a control stream."""

    __slots__ = ("starts", "shifts")

    def __init__(self, segments: list[tuple[int, int, int]]) -> None:
        """segments: (old start, shift, length) of the long matches. Where matches overlap in
        the old image the longest wins (ties: the earliest start, then the first listed); gaps
        keep the shift of what precedes them."""
        events = []
        for index, (start, _shift, length) in enumerate(segments):
            events.append((start, 1, index))
            events.append((start + length, 0, index))
        events.sort()
        open_segments: list[tuple[int, int, int]] = []  # heap of (-length, start, index)
        ended = set()
        starts: list[int] = []
        shifts: list[int] = []
        k = 0
        while k < len(events):
            position = events[k][0]
            while k < len(events) and events[k][0] == position:
                _, opening, index = events[k]
                if opening:
                    heapq.heappush(open_segments, (-segments[index][2], segments[index][0], index))
                else:
                    ended.add(index)
                k += 1
            while open_segments and open_segments[0][2] in ended:
                heapq.heappop(open_segments)
            if open_segments:
                shift = segments[open_segments[0][2]][1]
                if not shifts or shifts[-1] != shift:
                    starts.append(position)
                    shifts.append(shift)
        self.starts = starts
        self.shifts = shifts

    @classmethod
    def from_controls(cls, controls: Iterable[Control], min_segment: int) -> MoveMap:
        """The map of the matches of at least ``min_segment`` bytes."""
        segments = []
        old_pos = new_pos = 0
        for copy_len, extra_len, seek in controls:
            if copy_len >= min_segment:
                segments.append((old_pos, new_pos - old_pos, copy_len))
            new_pos += copy_len + extra_len
            old_pos += copy_len + seek
        return cls(segments)

    def shift(self, offset: int) -> int:
        if not self.starts:
            return 0
        i = bisect.bisect_right(self.starts, offset) - 1
        return self.shifts[i if i >= 0 else 0]


class OutsideMap:
    """Shifts of addresses outside the image (RAM variables, data past the image end), learned
    by the signer from the pair and carried in the header as (start, shift) steps over
    [starts[0], end)."""

    __slots__ = ("starts", "shifts", "end")

    def __init__(self, starts: list[int], shifts: list[int], end: int) -> None:
        self.starts = starts
        self.shifts = shifts
        self.end = end

    def shift(self, offset: int) -> int | None:
        if not self.starts or not self.starts[0] <= offset < self.end:
            return None
        return self.shifts[bisect.bisect_right(self.starts, offset) - 1]

    def to_fields(self) -> list[int]:
        """Header fields: step count, then zigzag (start delta, shift) pairs, then the length
        of the last step (the decoder's ``read_outside_map`` reads them back)."""
        out = [len(self.starts)]
        prev = 0
        for start, shift in zip(self.starts, self.shifts):
            out += [zigzag(start - prev), zigzag(shift)]
            prev = start
        if self.starts:
            out.append(self.end - prev)
        return out
