"""Near-duplicate lookup over 64-bit perceptual hashes, without comparing every pair."""

from __future__ import annotations

from collections import defaultdict


class NearDuplicateIndex:
    """Finds a kept hash within `max_distance` bits of a new one.

    The hash is cut into `max_distance + 1` bands: two hashes that differ in at
    most `max_distance` bits agree exactly on at least one band (pigeonhole), so
    only items sharing a band are compared.
    """

    def __init__(self, max_distance: int) -> None:
        self.max_distance = max_distance
        self.bands = max_distance + 1
        self.width = -(-64 // self.bands)
        self._buckets: list[dict[int, list[tuple[int, str]]]] = [
            defaultdict(list) for _ in range(self.bands)
        ]

    def _keys(self, value: int) -> list[int]:
        mask = (1 << self.width) - 1
        return [(value >> (band * self.width)) & mask for band in range(self.bands)]

    def find(self, value: int) -> str | None:
        """The name of a kept item near `value`, if any."""
        for band, key in enumerate(self._keys(value)):
            for other, name in self._buckets[band].get(key, ()):
                if (value ^ other).bit_count() <= self.max_distance:
                    return name
        return None

    def add(self, value: int, name: str) -> None:
        for band, key in enumerate(self._keys(value)):
            self._buckets[band][key].append((value, name))
