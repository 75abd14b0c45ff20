"""Errors every layer raises for bad input, so the CLI can print them as one line."""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad setting: the message names it and the fix, on one line."""


def check(cond: bool, msg: str) -> None:
    """Raise ConfigError(msg) unless `cond` holds (checked at construction)."""
    if not cond:
        raise ConfigError(msg)
