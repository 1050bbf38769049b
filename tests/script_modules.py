"""The project's scripts (`scripts/*.py`, not a package) loaded as modules for tests."""

import importlib.util
from types import ModuleType

from tests.paths import REPO_ROOT


def load_script(name: str) -> ModuleType:
    """`scripts/<name>.py`, imported from its file."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
