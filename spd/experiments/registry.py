"""The central registry of experiments: what a launcher needs to run each one."""

from dataclasses import dataclass
from pathlib import Path

from spd.errors import SPDUserError

EXPERIMENTS_DIR = Path(__file__).parent


@dataclass(frozen=True)
class ExperimentSpec:
    """One registered experiment.

    `decomp_script` is run as `python <decomp_script> <config_path> [--override k=v …]`;
    `expected_runtime` (minutes, on one GPU or this project's 2-core CPU, whichever is larger) sets
    SLURM time limits. `needs_network`: the run downloads its target or data from the Hugging Face
    hub (unless a local copy is configured).
    """

    task_name: str
    decomp_script: Path
    config_path: Path
    expected_runtime: int
    target_train_script: Path | None = None
    needs_network: bool = False


def _tms(name: str, minutes: int) -> ExperimentSpec:
    tms = EXPERIMENTS_DIR / "tms"
    return ExperimentSpec(
        task_name="tms",
        decomp_script=tms / "tms_decomposition.py",
        config_path=tms / f"{name.replace('-', '_')}_config.yaml",
        expected_runtime=minutes,
        target_train_script=tms / "train_tms.py",
    )


def _resid_mlp(name: str, minutes: int) -> ExperimentSpec:
    resid_mlp = EXPERIMENTS_DIR / "resid_mlp"
    return ExperimentSpec(
        task_name="resid_mlp",
        decomp_script=resid_mlp / "resid_mlp_decomposition.py",
        config_path=resid_mlp / f"{name}_config.yaml",
        expected_runtime=minutes,
        target_train_script=resid_mlp / "train_resid_mlp.py",
    )


def _lm(config_name: str, minutes: int, offline_example: bool = False) -> ExperimentSpec:
    lm = EXPERIMENTS_DIR / "lm"
    return ExperimentSpec(
        task_name="lm",
        decomp_script=lm / "lm_decomposition.py",
        config_path=lm / f"{config_name}_config.yaml",
        expected_runtime=minutes,
        target_train_script=lm / "make_offline_example.py" if offline_example else None,
        needs_network=not offline_example,
    )


def _lm_whole_model(config_name: str, minutes: int) -> ExperimentSpec:
    """A whole-model decomposition of a target `spd-pretrain` trains on the offline corpus."""
    lm = EXPERIMENTS_DIR / "lm"
    return ExperimentSpec(
        task_name="lm",
        decomp_script=lm / "lm_decomposition.py",
        config_path=lm / f"{config_name}_config.yaml",
        expected_runtime=minutes,
        target_train_script=lm / "pretrain" / "cli.py",
    )


# What `expected_runtime` is measured or guessed on, as `spd-run --list` says it.
RUNTIME_DEVICE = "one GPU or this project's 2-core CPU, whichever is slower"

EXPERIMENT_REGISTRY: dict[str, ExperimentSpec] = {
    # Measured on two idle CPU cores: 6 min 17 s (README, docs/benchmarks.md).
    "tms_5-2": _tms("tms_5-2", 7),
    "tms_5-2-id": _tms("tms_5-2-id", 15),
    # tms_5-2 with the global_shared_mlp CI function (docs/benchmarks.md).
    "tms_5-2-global": _tms("tms_5-2-global", 15),
    # tms_5-2 under the adversarial (PGD) objective of 2026 (docs/method.md).
    "tms_5-2-adv": _tms("tms_5-2-adv", 15),
    # tms_5-2 with persistent PGD instead of fresh PGD (docs/method.md, 'Persistent PGD').
    "tms_5-2-ppgd": _tms("tms_5-2-ppgd", 10),
    "tms_40-10": _tms("tms_40-10", 60),
    "tms_40-10-id": _tms("tms_40-10-id", 90),
    # From the CPU time per step on this 2-core machine (docs/resid_mlp.md); a GPU needs far less.
    "resid_mlp1": _resid_mlp("resid_mlp1", 90),
    "resid_mlp1-global": _resid_mlp("resid_mlp1-global", 90),
    # resid_mlp1 under the adversarial (PGD) objective of 2026 (docs/method.md).
    "resid_mlp1-adv": _resid_mlp("resid_mlp1-adv", 300),
    "resid_mlp2": _resid_mlp("resid_mlp2", 800),
    "resid_mlp3": _resid_mlp("resid_mlp3", 16_000),
    # Language models from the Hugging Face hub (or local copies of them). ss_emb is scaled from
    # the offline example of the same shape (about 1 step/s on the 2-core CPU); the others are
    # unmeasured guesses, for a GPU in the case of the GPT-2 models (impractical on the CPU).
    "ss_emb": _lm("ss_emb", 900),
    "ss_mlp": _lm("ss_mlp", 3000),
    "distilgpt2": _lm("distilgpt2", 600),
    "gpt2": _lm("gpt2", 1200),
    # The offline example built by make_offline_example.py (no network needed); measured.
    "lm_example_emb": _lm("lm_example_emb", 20, offline_example=True),
    "lm_example_mlp": _lm("lm_example_mlp", 25, offline_example=True),
    # lm_example_mlp with the global_shared_transformer CI function.
    "lm_example_mlp-global": _lm("lm_example_mlp-global", 40, offline_example=True),
    # Whole-model decompositions of the pretrained Llama targets (docs/whole_models.md; target:
    # `make pretrain-llama`). 2L measured: 21 min on one niced core of the busy 2-core CPU
    # (docs/results.md); -global ran as fast per step in a short run; 1L is a guess from 2L.
    "ss_llama_simple_mlp-1L": _lm_whole_model("ss_llama_simple_mlp-1L", 15),
    "ss_llama_simple_mlp-2L": _lm_whole_model("ss_llama_simple_mlp-2L", 25),
    # -2L with a global_shared_transformer CI function.
    "ss_llama_simple_mlp-2L-global": _lm_whole_model("ss_llama_simple_mlp-2L-global", 30),
}


def describe_experiments() -> list[str]:
    """A heading saying on what the runtimes hold, then one line per registered experiment:
    name, expected runtime, whether it needs the network."""
    width = max(len(name) for name in EXPERIMENT_REGISTRY)
    return [
        f"expected runtime in minutes on {RUNTIME_DEVICE}:",
    ] + [
        f"{name:<{width}}  ~{spec.expected_runtime} min  "
        + ("needs the network (Hugging Face hub)" if spec.needs_network else "offline")
        for name, spec in EXPERIMENT_REGISTRY.items()
    ]


def get_experiment(name: str) -> ExperimentSpec:
    """Look up an experiment, listing the registered ones if `name` is unknown."""
    if name not in EXPERIMENT_REGISTRY:
        raise SPDUserError(
            f"unknown experiment '{name}'; registered: {', '.join(EXPERIMENT_REGISTRY)}"
        )
    return EXPERIMENT_REGISTRY[name]
