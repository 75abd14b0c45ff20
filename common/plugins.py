"""Plugin modules: a module that registers samplers, judges or domains when it is imported."""
from __future__ import annotations

import importlib

from common.errors import ConfigError


def import_plugins(names: list[str]) -> None:
    """Import each named module (once; Python caches it), or refuse in one line."""
    for name in names:
        if not name or not all(part.isidentifier() for part in name.split(".")):
            raise ConfigError(f"plugin {name!r} is not a module name; pass e.g. --plugin mypackage.plugins")
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"--plugin {name}: cannot import it ({type(e).__name__}: {e}); put its folder on "
                              "PYTHONPATH or install its package") from None
