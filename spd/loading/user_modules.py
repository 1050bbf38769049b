"""Importing a module the user named in a config (a target class, a data source).

Importing runs the module's code, so it can fail in any way: not found, a syntax error, or any
exception its top level raises. Every one of those is the user's to fix and becomes one
`SPDUserError` line naming the config key, the module and the first line of the error. spd's own
modules are the exception: a failure importing one is a bug and keeps its traceback.
"""

import importlib
from types import ModuleType

from spd.errors import SPDUserError, one_line


def import_user_module(module_name: str, where: str, not_found_hint: str = "") -> ModuleType:
    """`importlib.import_module(module_name)`; `where` names the config key in the error."""
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        if _is_spd(module_name) and not _is_missing(err, module_name):
            raise
        raise SPDUserError(
            one_line(f"{where}: cannot import module '{module_name}' ({err}){not_found_hint}")
        ) from None
    except (Exception, SystemExit) as err:
        if _is_spd(module_name):
            raise
        first_line = str(err).split("\n")[0]
        raise SPDUserError(
            one_line(
                f"{where}: module '{module_name}' was found but fails to import "
                f"({type(err).__name__}: {first_line}); fix that module or the import path"
            )
        ) from None


def _is_spd(module_name: str) -> bool:
    return module_name == "spd" or module_name.startswith("spd.")


def _is_missing(err: ImportError, module_name: str) -> bool:
    """Whether the named module itself (or a package above it) does not exist."""
    missing = getattr(err, "name", None)
    return (
        isinstance(err, ModuleNotFoundError)
        and missing is not None
        and (module_name == missing or module_name.startswith(missing + "."))
    )
