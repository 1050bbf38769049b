"""Weights & Biases tracking of a decomposition run (the run directory is written either way).

Tracking is requested by setting `wandb_project` in the config. What happens then depends on the
environment (a `.env` file in the working directory, a parent of it, or the repository root is
read first; variables already set win; `.env.example` lists them):
- WANDB_MODE=offline: a real offline W&B run under `<run dir>/wandb/offline-run-…/` (config,
  history, figures and uploaded files) that `wandb sync <that dir>` uploads later;
- WANDB_API_KEY set, or the key `wandb login` stored in the netrc file ($NETRC, else ~/.netrc,
  an entry for the W&B host: api.wandb.ai unless WANDB_BASE_URL names another), and WANDB_MODE
  not `disabled`: an online run;
- otherwise: one line "tracking locally only" and no W&B at all.

The run gets the same scalars as metrics.jsonl, figures as images, and at the end the final
config, summary, report and checkpoints as files. The API key is only ever read by wandb itself:
nothing here prints or writes it, and error messages are scrubbed of it.
"""

import io
import netrc
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

from matplotlib.figure import Figure
from PIL import Image

from spd.config.environment import check_wandb_mode
from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.loading.env_files import load_env_files
from spd.losses.terms.importance_minimality import importance_params
from spd.persistence.run_dir import RunDirectory

if TYPE_CHECKING:
    import wandb  # imported where used: runs without W&B need not pay for importing it

API_KEY_ENV = "WANDB_API_KEY"
MODE_ENV = "WANDB_MODE"
DIR_ENV = "WANDB_DIR"
BASE_URL_ENV = "WANDB_BASE_URL"
DEFAULT_BASE_URL = "https://api.wandb.ai"
NETRC_ENV = "NETRC"
# Uploaded at the end of a run, besides every checkpoint (paths relative to the run directory).
RUN_FILES = ("final_config.yaml", "summary.json", "report.html")

TrackingMode = Literal["online", "offline", "local"]

_told_local_only = False


def netrc_path() -> Path:
    """The netrc file `wandb login` writes to: $NETRC if set, else ~/.netrc."""
    return Path(os.environ.get(NETRC_ENV) or Path.home() / ".netrc").expanduser()


def has_netrc_login() -> bool:
    """Whether the netrc file holds a password (the API key) for the W&B host."""
    path = netrc_path()
    if not path.is_file():
        return False
    host = urlparse(os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).hostname or ""
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        # An unreadable or malformed file holds no usable login; wandb would not use it either.
        return False
    return entry is not None and bool(entry[2])


def tracking_mode() -> TrackingMode:
    """Online with a key (environment or netrc login), offline with WANDB_MODE=offline, else local."""
    check_wandb_mode()
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode in ("offline", "dryrun"):
        return "offline"
    if mode == "disabled" or not (os.environ.get(API_KEY_ENV) or has_netrc_login()):
        return "local"
    return "online"


def wandb_run_name(config: Config, base: str) -> str:
    """`wandb_run_name`, else `<prefix><base>-C<C>-lr<lr>-imp<coeff>-p<pnorm>-seed<seed>`.

    The generated name shows the hyperparameters that sweeps vary most.
    """
    if config.wandb_run_name:
        return config.wandb_run_name
    # A per-module C shows its pairs' numbers in their order, e.g. C3_5.
    C = config.C if isinstance(config.C, int) else "_".join(str(pair.C) for pair in config.C)
    parts = [base, f"C{C}", f"lr{config.lr:g}"]
    importance = config.loss_coeffs.get("importance_minimality")
    if importance is not None:
        parts.append(f"imp{importance:g}")
    parts += [f"p{importance_params(config).pnorm:g}", f"seed{config.seed}"]
    return config.wandb_run_name_prefix + "-".join(parts)


def _scrub(message: str) -> str:
    key = os.environ.get(API_KEY_ENV)
    return message.replace(key, "***") if key else message


def figure_image(figure: Figure) -> Image.Image:
    """A matplotlib figure rendered as a PNG-backed PIL image."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    buffer.seek(0)
    image = Image.open(buffer)
    image.load()
    return image


class WandbSink:
    """A `Sink` (see spd/train/reporting.py) that logs to one W&B run."""

    def __init__(self, run: "wandb.Run") -> None:
        self.run = run

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def save_figure(self, step: int, name: str, figure: Figure) -> "wandb.Image":
        import wandb

        image = wandb.Image(figure_image(figure), caption=f"{name}, step {step}")
        self.run.log({f"figures/{name}": image}, step=step)
        return image

    def upload_run_files(self, run_dir: RunDirectory) -> list[str]:
        """Put the run's final config, summary, report and checkpoints into the W&B run's files.

        Each file is hard-linked (copied where links are impossible) into the W&B run's own file
        directory, so an offline run holds real files that `wandb sync` uploads later.
        Returns the uploaded names, relative to the run directory.
        """
        files = [run_dir.path / name for name in RUN_FILES if (run_dir.path / name).is_file()]
        files += sorted(run_dir.checkpoints.glob("model_*.pth"))
        uploaded: list[str] = []
        for path in files:
            relative = path.relative_to(run_dir.path)
            destination = Path(self.run.dir) / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.unlink(missing_ok=True)
            try:
                os.link(path, destination)
            except OSError:
                shutil.copy2(path, destination)
            self.run.save(str(destination), base_path=self.run.dir, policy="now")
            uploaded.append(relative.as_posix())
        return uploaded

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def start_wandb_run(config: Config, run_dir: RunDirectory, base_name: str) -> WandbSink | None:
    """Start the W&B run the config asks for, or None (no project, or no credentials)."""
    global _told_local_only
    if config.wandb_project is None:
        return None
    load_env_files()
    mode = tracking_mode()
    if mode == "local":
        if not _told_local_only:
            print(
                f"spd: no W&B credentials ({API_KEY_ENV} unset and no `wandb login` in "
                f"{netrc_path()}, or {MODE_ENV}=disabled); tracking locally only. Set "
                f"{MODE_ENV}=offline for an offline W&B run.",
                flush=True,
            )
            _told_local_only = True
        return None
    # The W&B files live inside the run directory unless WANDB_DIR says otherwise.
    directory = None if os.environ.get(DIR_ENV) else str(run_dir.path)
    import wandb

    # The run directory remembers its W&B run, so a resumed run continues the same W&B run.
    id_file = run_dir.path / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    try:
        run = wandb.init(
            id=run_id,
            resume="allow",
            project=config.wandb_project,
            entity=config.wandb_entity,
            name=wandb_run_name(config, base_name),
            group=config.wandb_group,
            tags=config.wandb_tags or None,
            config=config.model_dump(mode="json"),
            dir=directory,
            mode=mode,
            save_code=False,
        )
    except Exception as err:  # wandb raises many kinds (auth, network, usage)
        first_line = _scrub(str(err)).split("\n")[0]
        raise SPDUserError(
            f"W&B could not start a run in project '{config.wandb_project}' ({type(err).__name__}: "
            f"{first_line}); set {MODE_ENV}=offline to track offline and sync later"
        ) from None
    return WandbSink(run)


RUN_ID_FILE = "wandb_run_id"


@contextmanager
def wandb_tracking(
    config: Config, run_dir: RunDirectory, base_name: str
) -> Iterator[list[WandbSink]]:
    """Track the enclosed run on W&B (when the config asks): yields the sinks to pass to `optimize`.

    On leaving, the run's files are uploaded and the W&B run is finished, marked failed (exit code
    1) if the block raised.
    """
    sink = start_wandb_run(config, run_dir, base_name)
    exit_code = 1
    try:
        yield [sink] if sink is not None else []
        exit_code = 0
    finally:
        if sink is not None:
            sink.upload_run_files(run_dir)
            sink.finish(exit_code)
