"""The registry every plug-in kind uses: lazy built-ins, one name each, clear unknown names."""

import sys
from pathlib import Path

import pytest

from spd.config.plugin_registry import PluginRegistry


def test_unknown_name_lists_the_known_ones() -> None:
    registry: PluginRegistry[int] = PluginRegistry("gadget", ())
    registry.register("b", 2)
    registry.register("a", 1)
    with pytest.raises(ValueError, match="unknown gadget 'c'; available: a, b"):
        registry.get("c")


def test_a_second_plugin_of_one_name_is_refused() -> None:
    registry: PluginRegistry[object] = PluginRegistry("thing", ())
    first = object()
    registry.register("x", first)
    registry.register("x", first)  # the same object again (a module imported twice) is fine
    with pytest.raises(ValueError, match="thing 'x' is registered twice"):
        registry.register("x", object())


def test_builtin_module_import_registers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry: PluginRegistry[str] = PluginRegistry("tool", ("tests_tool_plugin_module",))
    (tmp_path / "tests_tool_plugin_module.py").write_text(
        "from tests.test_plugin_registry import REGISTRY_UNDER_TEST\n"
        "REGISTRY_UNDER_TEST[0].register('hammer', 'hits')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    REGISTRY_UNDER_TEST[:] = [registry]
    assert "tests_tool_plugin_module" not in sys.modules  # nothing imported before a lookup
    assert registry.names() == ["hammer"]
    assert registry.get("hammer") == "hits"


REGISTRY_UNDER_TEST: list[PluginRegistry[str]] = []
