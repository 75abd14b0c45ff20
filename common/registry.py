"""One small registry shape for the plugin kinds (samplers, judges, domains)."""
from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named items in registration order; a second item under a taken name is refused."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if not name or name != name.strip():
            raise ValueError(f"{self.kind} name {name!r}: give a non-empty name without edge spaces")
        known = self._items.get(name)
        if known is not None and known is not item:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._items[name] = item
        return item

    def remove(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> T | None:
        return self._items.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def items(self) -> dict[str, T]:
        """A copy, in registration order."""
        return dict(self._items)
