"""Where a command may write a file the user named: never into a run directory.

A run directory belongs to its run (`RunDirectory`): a page or file written there by another
command (`spd-report --out`) could replace its metrics, config or checkpoints. A path whose
folder, or any folder above it, is a run directory is refused, and so is an existing file that
the command did not write itself (`own_marker`: text its own files begin with).
"""

from pathlib import Path

from spd.errors import SPDUserError

# What marks a run directory: its config, or its metrics when the config was never written.
RUN_MARKERS = ("final_config.yaml", "metrics.jsonl")


def enclosing_run_directory(path: Path) -> Path | None:
    """The run directory `path` lies in (its folder or one above it), if any."""
    for folder in path.resolve().parents:
        if any((folder / marker).is_file() for marker in RUN_MARKERS):
            return folder
    return None


def check_output_file(path: Path, option: str, own_marker: str) -> None:
    """Raise `SPDUserError` unless `path` may be written by a command that makes `own_marker`
    files: outside every run directory, and either new or one of its own earlier outputs."""
    run_dir = enclosing_run_directory(path)
    if run_dir is not None:
        raise SPDUserError(
            f"{option} {path} is inside the run directory {run_dir}; a run's files are its own, "
            "write the page somewhere else"
        )
    if path.is_file():
        try:
            with path.open("rb") as handle:
                start = handle.read(len(own_marker.encode()))
        except OSError as err:
            raise SPDUserError(
                f"{option} {path} exists and cannot be read ({err.strerror})"
            ) from None
        if start != own_marker.encode():
            raise SPDUserError(
                f"{option} {path} exists and was not written by this command; give a new file "
                "name (an earlier output of it is replaced)"
            )
