"""Reading torch files that someone else may have written, without running anything in them.

Every torch file spd reads (checkpoints, targets, the analysis state) goes through
`load_weights_only`: `torch.load(weights_only=True)` rebuilds only tensors and plain containers
and refuses any other pickled object, so a planted `__reduce__` payload is an error, never code
that runs. Each way such a file can be unusable (missing, unreadable, truncated, not a torch file,
a foreign object inside) is one `SPDUserError` line naming the file.
"""

from pathlib import Path
from typing import Any

import torch

from spd.errors import SPDUserError, one_line


def load_weights_only(path: Path, what: str, fix: str = "") -> Any:
    """The content of the torch file `path` (tensors and plain containers, on the CPU).

    `what` names the file in the error ("checkpoint", "analysis state"); `fix` is appended to it.
    """
    advice = f"; {fix}" if fix else ""
    if not path.is_file():
        raise SPDUserError(f"{what} {path} does not exist or is not a file{advice}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise SPDUserError(f"{what} {path} is not readable (permission denied){advice}") from None
    except Exception as err:  # torch raises many kinds for a damaged or foreign file
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            reason = "it holds objects other than tensors, which spd never unpickles"
        else:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise SPDUserError(one_line(f"cannot read {what} {path}: {reason}{advice}")) from None
