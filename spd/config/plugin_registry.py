"""One registry type for every kind of plug-in: tasks, CI-function types, loss terms.

A plug-in is one module in the stage where it belongs (a task under `spd/experiments/`, a CI
function under `spd/models/`, a loss term under `spd/losses/`). It registers itself when imported.
The config must know every plug-in when it validates a file, but the config stage cannot import
the stages above it, so each kind's registry (a `PluginRegistry` in a config-stage module) names
its built-in plug-ins by module path and imports them on the first lookup. Adding a built-in
plug-in is its module plus one line in that tuple; a user's plug-in registers itself from its own
module, imported before the config is validated.
"""

import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar

PluginT = TypeVar("PluginT")


class PluginRegistry(Generic[PluginT]):
    """Plug-ins of one `kind`, by name; `builtin_modules` are imported on the first lookup."""

    def __init__(self, kind: str, builtin_modules: tuple[str, ...]) -> None:
        self.kind = kind
        self.builtin_modules = builtin_modules
        self._plugins: dict[str, PluginT] = {}
        self._loaded = False

    def register(self, name: str, plugin: PluginT) -> PluginT:
        """Add `plugin` under `name`; a second, different plug-in of the same name is a bug."""
        registered = self._plugins.get(name)
        if registered is not None and registered is not plugin:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._plugins[name] = plugin
        return plugin

    def _load_builtins(self) -> None:
        if not self._loaded:
            # Set first: a built-in module that looks a plug-in up while importing must not loop.
            self._loaded = True
            for module in self.builtin_modules:
                importlib.import_module(module)  # importing registers the module's plug-ins

    def get(self, name: str) -> PluginT:
        """The plug-in registered as `name`; ValueError listing the known names otherwise."""
        self._load_builtins()
        if name not in self._plugins:
            raise ValueError(
                f"unknown {self.kind} '{name}'; available: {', '.join(self.names()) or 'none'}"
            )
        return self._plugins[name]

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load_builtins()
        return sorted(self._plugins)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._plugins

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
