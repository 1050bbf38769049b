"""Where a language-model run's model, tokenizer and dataset come from: local paths or the hub.

A name in `pretrained_model_name_hf`, `task_config.tokenizer_name` or `task_config.dataset_name`
is a local path when it exists as given (absolute or relative to the working directory),
relative to the repository root, or relative to the output root (SPD_OUT_DIR, else the config's
`out_dir`, else ./spd_out); that last rule is how the offline example's configs find what
`make_offline_example.py` built. `resolve_sources` rewrites local names to absolute paths, so
`final_config.yaml` records exactly what was used, and checks every remaining hub id at once
before anything is loaded.
"""

from pathlib import Path

from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.experiments.lm.config import LMTaskConfig
from spd.loading.hf_hub import HubResource, ResourceKind, require_hub_resources
from spd.loading.run_paths import REPO_ROOT
from spd.persistence.run_dir import output_root

EXAMPLE_DIRNAME = "lm_offline_example"
EXAMPLE_BUILD_COMMAND = "python spd/experiments/lm/make_offline_example.py"
# `spd-pretrain` writes run <name> to <output root>/pretrain/<name>, its model to .../model.
PRETRAIN_DIRNAME = "pretrain"
PRETRAIN_COMMAND = "spd-pretrain spd/experiments/lm/pretrain/<name>.yaml"


def default_example_dir(out_dir: str | None = None) -> Path:
    """Where `make_offline_example.py` writes by default: <output root>/lm_offline_example."""
    return output_root(out_dir) / EXAMPLE_DIRNAME


def find_local(name: str, out_dir: str | None) -> Path | None:
    """The existing local path `name` refers to (see the module docstring), or None."""
    given = Path(name).expanduser()
    candidates = [given]
    if not given.is_absolute():
        candidates += [REPO_ROOT / given, output_root(out_dir) / given]
    return next((c.resolve() for c in candidates if c.exists()), None)


def _example_missing(name: str, out_dir: str | None) -> SPDUserError:
    where = output_root(out_dir) / name
    return SPDUserError(
        f"the offline language-model example has not been built yet ({where} does not exist); "
        f"build it with `{EXAMPLE_BUILD_COMMAND}` (a few minutes on CPU; it writes "
        f"{default_example_dir(out_dir)})"
    )


def _not_pretrained(name: str, out_dir: str | None) -> SPDUserError:
    where = output_root(out_dir) / name
    run = Path(name).parts[1] if len(Path(name).parts) > 1 else "<name>"
    return SPDUserError(
        f"the target model {where} has not been pretrained yet; pretrain it with "
        f"`{PRETRAIN_COMMAND.replace('<name>', run)}` (or your own pretraining config)"
    )


def missing_source(name: str, out_dir: str | None) -> SPDUserError | None:
    """The error for a name under the offline example or a pretraining run that is not built yet
    (with the command that builds it); None for any other name."""
    first = Path(name).parts[0] if Path(name).parts else ""
    if first == EXAMPLE_DIRNAME:
        return _example_missing(name, out_dir)
    if first == PRETRAIN_DIRNAME:
        return _not_pretrained(name, out_dir)
    return None


def local_source_overrides(config: Config) -> dict[str, str]:
    """Dotted-key overrides that pin the model, tokenizer and dataset names found locally to
    absolute paths, and fail early when the offline example is named but not built.

    The launcher applies them before it moves a run's output root to its launch directory, so
    that names relative to the user's output root still find what is there.
    """
    task = config.task_config
    if not isinstance(task, LMTaskConfig) or config.pretrained_model_name_hf is None:
        return {}
    named = {
        "pretrained_model_name_hf": config.pretrained_model_name_hf,
        "task_config.tokenizer_name": task.tokenizer_name,
        "task_config.dataset_name": task.dataset_name,
    }
    overrides: dict[str, str] = {}
    for key, name in named.items():
        path = find_local(name, config.out_dir)
        if path is not None:
            overrides[key] = str(path)
        elif (missing := missing_source(name, config.out_dir)) is not None:
            raise missing
    return overrides


def resolve_sources(config: Config) -> Config:
    """`config` with local model/tokenizer/dataset names made absolute; hub ids checked.

    Raises one `SPDUserError` for the offline example not yet built, or for every hub id that
    cannot be fetched here.
    """
    # Here, not at the top: `lm_data` imports `datasets`, and every config validation imports
    # this module (through the task).
    from spd.data.lm_data import FILE_FORMAT_BUILDERS

    task = config.task_config
    if not isinstance(task, LMTaskConfig):
        raise SPDUserError(
            f"a language-model run needs task_config.task_name 'lm', got '{task.task_name}'"
        )
    model_name = config.pretrained_model_name_hf
    if model_name is None:
        raise SPDUserError("set pretrained_model_name_hf to the model's hub id or local directory")
    named: dict[ResourceKind, tuple[str, str]] = {
        "model": (model_name, "pretrained_model_name_hf"),
        "tokenizer": (task.tokenizer_name, "task_config.tokenizer_name"),
        "dataset": (task.dataset_name, "task_config.dataset_name"),
    }
    local: dict[ResourceKind, str] = {}
    hub: list[HubResource] = []
    for kind, (name, key) in named.items():
        path = find_local(name, config.out_dir)
        if path is not None:
            local[kind] = str(path)
        elif (missing := missing_source(name, config.out_dir)) is not None:
            raise missing
        elif kind == "dataset" and name in FILE_FORMAT_BUILDERS:
            continue  # a file format read from `data_files`: nothing to fetch
        else:
            hub.append(HubResource(kind, name, key))
    require_hub_resources(hub)
    task = task.model_copy(
        update={
            "tokenizer_name": local.get("tokenizer", task.tokenizer_name),
            "dataset_name": local.get("dataset", task.dataset_name),
        }
    )
    return config.model_copy(
        update={
            "pretrained_model_name_hf": local.get("model", model_name),
            "task_config": task,
        }
    )
