"""`(label, bytes)` pairs already in memory: the digits data set and tests."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass

from collector.base import Item
from collector.sources.core import Context, Source, const


@dataclass
class PairsSource(Source):
    """Items from `(label, bytes)` pairs, keyed `<name>[<index>]`."""

    pairs: Iterable[tuple[str, bytes]] = ()
    remember: bool = False

    async def items(self, ctx: Context) -> AsyncGenerator[Item, None]:
        for index, (label, data) in enumerate(self.pairs):
            yield Item(key=f"{self.name}[{index}]", label=label, load=const(data), origin=self.name)
