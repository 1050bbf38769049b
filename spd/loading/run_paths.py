"""Turning a path from a config or a command line into a directory or file on this machine.

Two forms are accepted wherever a target model or a trained decomposition is named:
- a local path (a checkpoint file, a run directory, a target directory), taken as given or else
  relative to the repository root (the directory holding the `spd` package);
- `wandb:<entity>/<project>/runs/<run id>`: a W&B run. Its files are downloaded once, through
  the W&B public API, into `<cache>/wandb/<entity>/<project>/<run id>` (cache: $SPD_CACHE_DIR or
  ~/.cache/spd) and the download is reused by every later call. The cached directory has the
  layout of a run directory (final_config.yaml, checkpoints/…), or of a target directory when
  the run uploaded a target model.
"""

import netrc
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from spd.errors import SPDUserError
from spd.loading.env_files import REPO_ROOT, load_env_files

WANDB_PREFIX = "wandb:"
CACHE_ENV = "SPD_CACHE_DIR"
DEFAULT_CACHE = "~/.cache/spd"
# Written last into a cached run directory: without it a download was interrupted and is redone.
COMPLETE_MARKER = ".download-complete"
# Files W&B adds to every run by itself; they are not part of an spd run directory.
WANDB_OWN_FILES = frozenset(
    {
        "config.yaml",
        "wandb-metadata.json",
        "wandb-summary.json",
        "requirements.txt",
        "output.log",
        "diff.patch",
        "conda-environment.yaml",
    }
)
_CHECKPOINT_FILE = re.compile(r"^checkpoints/model_\d+\.pth$")
_SEGMENT = re.compile(r"^[^/\s]+$")
WANDB_FORM = "wandb:<entity>/<project>/runs/<run id>"
WANDB_KEY_ENV = "WANDB_API_KEY"
WANDB_HOST = "api.wandb.ai"
# How long one W&B API request may take: without a network the lookup then fails in seconds.
WANDB_TIMEOUT_SECONDS = 20


@dataclass(frozen=True)
class WandbRunRef:
    """A W&B run named by entity, project and run id."""

    entity: str
    project: str
    run_id: str

    @property
    def api_path(self) -> str:
        """The path the W&B public API takes (`entity/project/run_id`)."""
        return f"{self.entity}/{self.project}/{self.run_id}"


def is_wandb_path(path: str | Path) -> bool:
    """Whether `path` names a W&B run (starts with `wandb:`)."""
    return str(path).startswith(WANDB_PREFIX)


def parse_wandb_path(text: str) -> WandbRunRef:
    """Split `wandb:<entity>/<project>/runs/<run id>`; any other form is a user error."""
    if not is_wandb_path(text):
        raise SPDUserError(f"'{text}' is not a W&B run path; write it as {WANDB_FORM}")
    parts = text[len(WANDB_PREFIX) :].split("/")
    if len(parts) != 4 or parts[2] != "runs" or not all(_SEGMENT.match(p) for p in parts):
        raise SPDUserError(f"'{text}' is not a W&B run path; write it as {WANDB_FORM}")
    return WandbRunRef(entity=parts[0], project=parts[1], run_id=parts[3])


def cache_root() -> Path:
    """Where downloaded runs are kept: $SPD_CACHE_DIR, else ~/.cache/spd."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def cached_run_dir(ref: WandbRunRef) -> Path:
    """The local directory that holds (or will hold) the files of a W&B run."""
    return cache_root() / "wandb" / ref.entity / ref.project / ref.run_id


def _files_to_fetch(names: list[str]) -> list[str]:
    """The run's own files, with only the latest decomposition checkpoint."""
    wanted = [n for n in names if n not in WANDB_OWN_FILES and not n.startswith("media/")]
    checkpoints = sorted(n for n in wanted if _CHECKPOINT_FILE.match(n))
    return [n for n in wanted if not _CHECKPOINT_FILE.match(n)] + checkpoints[-1:]


def cached_wandb_run(ref: WandbRunRef) -> Path | None:
    """The complete local copy of a W&B run's files, if one was downloaded; never fetches."""
    target = cached_run_dir(ref)
    return target if (target / COMPLETE_MARKER).is_file() else None


def _has_wandb_key() -> bool:
    """Whether a W&B API key is set: the environment (or a `.env` file), or the netrc file that
    `wandb login` writes ($NETRC, else ~/.netrc)."""
    load_env_files()
    if os.environ.get(WANDB_KEY_ENV):
        return True
    netrc_file = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        return netrc.netrc(netrc_file).authenticators(WANDB_HOST) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _unfetchable(ref: WandbRunRef, why: str) -> SPDUserError:
    return SPDUserError(
        f"cannot read W&B run {ref.api_path} ({why}); set {WANDB_KEY_ENV} (or run `wandb login`) where the network is reachable, or "
        "use a local copy of the run's files (e.g. --override pretrained_model_path=DIR, "
        "spd-config upgrade --target DIR)"
    )


def download_wandb_run(ref: WandbRunRef) -> Path:
    """The local copy of a W&B run's files, downloading them on first use only."""
    cached = cached_wandb_run(ref)
    if cached is not None:
        return cached
    target = cached_run_dir(ref)
    if not _has_wandb_key():
        raise _unfetchable(ref, f"not in the cache {target} and no W&B API key is set")
    import wandb  # only needed on a cache miss; importing wandb takes a while

    try:
        run = wandb.Api(timeout=WANDB_TIMEOUT_SECONDS).run(ref.api_path)
        remote_files = {f.name: f for f in run.files()}
    except Exception as err:  # the public API raises its own error kinds (auth, not found, network)
        first_line = str(err).split("\n")[0]
        raise _unfetchable(ref, f"{type(err).__name__}: {first_line}") from None
    names = _files_to_fetch(list(remote_files))
    if not names:
        raise SPDUserError(f"W&B run {ref.api_path} has no uploaded files to load")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Download next to the cache entry and move it into place, so that a half-finished download
    # is never taken for a complete one.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{ref.run_id}.", suffix=".partial"))
    try:
        for name in names:
            remote_files[name].download(root=str(staging), replace=True)
        (staging / COMPLETE_MARKER).write_text(
            f"{WANDB_PREFIX}{ref.entity}/{ref.project}/runs/{ref.run_id}\n"
        )
        if target.exists() and not (target / COMPLETE_MARKER).is_file():
            shutil.rmtree(target)  # an earlier interrupted download
        try:
            os.replace(staging, target)
        except OSError:
            # Another process (e.g. a sibling SLURM task) finished the same download first.
            if not (target / COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_run_path(path: str | Path) -> Path | None:
    """A local file or directory for `path` (downloading a `wandb:` run); None if a local path is missing."""
    text = str(path)
    if is_wandb_path(text):
        return download_wandb_run(parse_wandb_path(text))
    candidate = Path(text).expanduser()
    if candidate.exists():
        return candidate
    if not candidate.is_absolute() and (REPO_ROOT / candidate).exists():
        return REPO_ROOT / candidate
    return None
