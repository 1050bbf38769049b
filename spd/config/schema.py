"""The typed configuration of an SPD run (one YAML file ↔ one `Config`)."""

from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from spd.config.device import check_device_string
from spd.config.evaluators import validate_specs

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
OptionalCoeff = NonNegativeFloat | None
# Every field named `<term>_coeff` is the coefficient of the loss term `<term>`.
LOSS_COEFF_SUFFIX = "_coeff"

GateType = Literal["mlp", "vector_mlp"]
SigmoidType = Literal["leaky_hard", "normal", "hard", "upper_leaky_hard", "swish_hard"]
LRSchedule = Literal["constant", "linear", "cosine", "exponential"]
OutputLossType = Literal["mse", "kl"]
TiedWeightsMode = Literal["shared_storage", "single_parameter"]
CompileMode = Literal["auto", "on", "off"]
DataGeneration = Literal["at_least_zero_active", "exactly_one_active"]
DATA_GENERATION_DESCRIPTION = (
    "at_least_zero_active: each feature active independently, with a uniform random value; "
    "exactly_one_active: one random feature per example"
)


def _has_huge_number(value: Any) -> bool:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return abs(value) >= 2**63
    if isinstance(value, list | tuple):
        return any(_has_huge_number(v) for v in value)
    return False


class StrictModel(BaseModel):
    """Base of every config block: unknown keys are errors, values are frozen, and every float is
    finite (`.inf` / `.nan` are refused when the file is read, not at the first step)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Text fields that may be empty; an empty name, path or id anywhere else is a mistake.
    empty_text_allowed: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="after")
    @classmethod
    def _bounded_values(cls, value: Any, info: ValidationInfo) -> Any:
        # Counts and sizes end up in torch tensors and C code: past int64 they overflow there,
        # mid-run, instead of here. No coefficient, rate or exponent is meaningful that large.
        if _has_huge_number(value):
            raise ValueError(f"numbers must be below 2**63 in size, got {value!r}")
        if value == "" and info.field_name not in cls.empty_text_allowed:
            raise ValueError("must not be empty")
        return value


class MetricSpec(StrictModel):
    """One selected metric or figure: its registry name and keyword parameters."""

    name: str = Field(
        description="Registry name of the metric or figure (spd/eval/metrics.py, spd/eval/figures.py)"
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the metric or figure"
    )


class TMSTaskConfig(StrictModel):
    """Data of the toy-model-of-superposition experiments."""

    task_name: Literal["tms"] = Field(default="tms", description="Selects this task")
    feature_probability: Probability = Field(
        default=0.05, description="Chance that each feature is active in an example"
    )
    data_generation_type: DataGeneration = Field(
        default="at_least_zero_active", description=DATA_GENERATION_DESCRIPTION
    )


class ResidMLPTaskConfig(StrictModel):
    """Data of the residual-MLP experiments."""

    task_name: Literal["resid_mlp"] = Field(default="resid_mlp", description="Selects this task")
    feature_probability: Probability = Field(
        default=0.01, description="Chance that each feature is active in an example"
    )
    data_generation_type: DataGeneration = Field(
        default="at_least_zero_active", description=DATA_GENERATION_DESCRIPTION
    )


class LMTaskConfig(StrictModel):
    """Text data of the language-model experiments, tokenised into fixed-length sequences.

    `dataset_name` and `tokenizer_name` are Hugging Face hub ids or local paths (see
    `spd/experiments/lm/sources.py` for how a name is resolved).
    """

    task_name: Literal["lm"] = Field(default="lm", description="Selects this task")
    dataset_name: str = Field(description="Hub dataset id, or a local directory of data files")
    dataset_config_name: str | None = Field(
        default=None,
        description="The dataset's configuration (subset) name, if it has several",
    )
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        default=None,
        description="Data files to read instead of the dataset's own (passed to datasets.load_dataset)",
    )
    text_column: str = Field(description="Column holding the text of each document")
    train_split: str = Field(
        default="train",
        description="Split (or slice, e.g. 'train[:99%]') to train on",
    )
    eval_split: str = Field(default="test", description="Held-out split (or slice) to evaluate on")
    max_seq_len: PositiveInt = Field(default=512, description="Tokens per training sequence")
    streaming: bool = Field(
        default=False,
        description="Stream the dataset instead of downloading it whole",
    )
    shuffle_seed: NonNegativeInt | None = Field(
        default=None, description="Seed of the document order; null: the run's `seed`"
    )
    shuffle_buffer_size: PositiveInt = Field(
        default=10_000, description="Documents held for shuffling when streaming"
    )
    tokenizer_name: str = Field(description="Hub id or local directory of the model's tokenizer")

    @model_validator(mode="after")
    def _check_splits(self) -> Self:
        if self.train_split == self.eval_split:
            raise ValueError(
                f"train_split and eval_split are both '{self.train_split}'; evaluate on held-out "
                "data (another split, or a slice such as 'train[:99%]' / 'train[99%:]')"
            )
        return self


class GenericTaskConfig(StrictModel):
    """Input batches for any target, from a function or class named by import path
    (`spd/experiments/generic/data_source.py` states the contract)."""

    task_name: Literal["generic"] = Field(default="generic", description="Selects this task")
    data_source: str = Field(
        description="Import path 'package.module:name' of a function or class called as "
        "name(batch_size=..., seed=..., **data_params) that yields input batches"
    )
    data_params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the data source"
    )
    eval_data_params: dict[str, Any] | None = Field(
        default=None,
        description="Keyword arguments for the eval stream instead of data_params (null: the "
        "same); the eval stream is seeded differently either way",
    )


TaskConfig = Annotated[
    TMSTaskConfig | ResidMLPTaskConfig | LMTaskConfig | GenericTaskConfig,
    Field(discriminator="task_name"),
]


class Config(StrictModel):
    """Everything one decomposition run needs. Field meanings follow docs/method.md."""

    # --- run bookkeeping ---
    seed: Annotated[int, Field(ge=0, lt=2**32)] = Field(
        default=0, description="Seed of every random stream (below 2**32, the widest numpy takes)"
    )
    device: str = Field(
        default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N' (see spd/config/device.py)"
    )
    compile: CompileMode = Field(
        default="auto",
        description=(
            "torch.compile of the training step's loss computation (spd/train/compilation.py). "
            "on: compile, falling back to eager with one line if compilation is unavailable; "
            "off: eager; auto: compile where it was measured to pay, which is nowhere yet (eager on "
            "CPU and CUDA; see docs/benchmarks.md, Compilation)."
        ),
    )
    run_name: str | None = Field(
        default=None,
        description="Name of the run directory (after its timestamp); null: the experiment's name",
    )
    out_dir: str | None = Field(
        default=None,
        description="Output root for run directories; the SPD_OUT_DIR environment variable overrides it.",
    )

    # --- decomposition ---
    C: PositiveInt = Field(description="Subcomponents per decomposed matrix")
    target_module_patterns: list[str] = Field(
        min_length=1,
        description=(
            "fnmatch patterns of the module names to decompose (Linear, Embedding or GPT-2 Conv1D)"
        ),
    )
    gate_type: GateType = Field(
        default="mlp",
        description=(
            "Form of the CI functions: mlp (one small MLP per subcomponent on its scalar inner "
            "activation) or vector_mlp (one per subcomponent on the layer's whole input)"
        ),
    )
    gate_hidden_dims: list[PositiveInt] = Field(
        default_factory=lambda: [16],
        description="Hidden widths of each CI function's MLP (GELU between layers)",
    )
    sigmoid_type: SigmoidType = Field(
        default="leaky_hard",
        description=(
            "How the CI functions' raw outputs become CI values in [0, 1]; see docs/method.md, "
            "Causal importance"
        ),
    )
    tied_weights: list[tuple[str, str]] | None = Field(
        default=None,
        description="Pairs (source, tied): the tied module's components are the transpose of the source's.",
    )
    tied_weights_mode: TiedWeightsMode = Field(
        default="shared_storage",
        description=(
            "How AdamW sees a tied pair. shared_storage (the original implementation's dynamics): "
            "each module holds its own parameters over one shared storage, so every step applies "
            "two AdamW updates to the same numbers. single_parameter: the tied module reads the "
            "source's factors transposed, one parameter with the summed gradient and one update "
            "(this project's behaviour before; see docs/method.md, 'Differences from the "
            "original implementation')."
        ),
    )

    # --- loss coefficients (null: the term is not computed) ---
    faithfulness_coeff: OptionalCoeff = Field(
        default=1.0,
        description=(
            "Weight of the squared distance between each target matrix and its subcomponents' sum"
        ),
    )
    stochastic_recon_coeff: OptionalCoeff = Field(
        default=1.0,
        description=(
            "Weight of the output reconstruction with every decomposed layer stochastically masked"
        ),
    )
    stochastic_recon_layerwise_coeff: OptionalCoeff = Field(
        default=None,
        description="Weight of the output reconstruction with one stochastically masked layer at a time",
    )
    recon_coeff: OptionalCoeff = Field(
        default=None,
        description="Weight of the output reconstruction with every layer masked by its CI",
    )
    recon_layerwise_coeff: OptionalCoeff = Field(
        default=None,
        description="Weight of the output reconstruction with one CI-masked layer at a time",
    )
    importance_minimality_coeff: OptionalCoeff = Field(
        default=1e-3,
        description="Weight of the p-norm of the CI values (the sparsity pressure)",
    )
    schatten_coeff: OptionalCoeff = Field(
        default=None,
        description="Weight of the CI-weighted squared norms of the subcomponents (optional)",
    )
    out_recon_coeff: OptionalCoeff = Field(
        default=None,
        description=(
            "Weight of the output reconstruction with every layer's components unmasked (optional)"
        ),
    )
    embedding_recon_coeff: OptionalCoeff = Field(
        default=None,
        description=(
            "Weight of the masked embedding's error against the original embedding (needs a "
            "decomposed Embedding)"
        ),
    )
    is_embed_unembed_recon: bool = Field(
        default=False,
        description=(
            "embedding_recon compares both embeddings after lm_head, with KL, instead of by "
            "squared error"
        ),
    )
    output_loss_type: OutputLossType = Field(
        default="mse",
        description="Output divergence of the reconstruction losses: mse, or kl over the logits",
    )
    n_mask_samples: PositiveInt = Field(
        default=1,
        description="Stochastic mask draws averaged per step",
    )

    pnorm: PositiveFloat = Field(
        default=1.0,
        description="Exponent p of importance_minimality (its start value when annealed)",
    )
    p_anneal_start_frac: Fraction = Field(
        default=1.0,
        description="Fraction of training at which p starts moving towards p_anneal_final_p",
    )
    p_anneal_final_p: PositiveFloat | None = Field(
        default=None,
        description="Value p reaches at p_anneal_end_frac; null: p stays pnorm",
    )
    p_anneal_end_frac: Fraction = Field(
        default=1.0,
        description="Fraction of training at which p reaches p_anneal_final_p",
    )

    # --- optimisation ---
    lr: PositiveFloat = Field(default=1e-3, description="Peak AdamW learning rate (weight decay 0)")
    steps: PositiveInt = Field(default=10_000, description="Optimisation steps")
    batch_size: PositiveInt = Field(
        default=4096,
        description="Examples (sequences, for language models) per step, over all ranks",
    )
    gradient_accumulation_steps: PositiveInt = Field(
        default=1,
        description="Micro-batches a step's batch is split into (must divide batch_size)",
    )
    lr_schedule: LRSchedule = Field(
        default="constant",
        description="Learning-rate decay after the warm-up: constant, linear, cosine or exponential",
    )
    lr_exponential_halflife: PositiveFloat | None = Field(
        default=None,
        description="Half-life in steps of the exponential schedule",
    )
    lr_warmup_pct: Fraction = Field(
        default=0.0,
        description="Fraction of the steps with a linear learning-rate warm-up",
    )

    # --- bookkeeping frequencies ---
    train_log_freq: PositiveInt = Field(
        default=100,
        description="Steps between logs of the loss terms, CI-L0, alive counts, lr and gradient norm",
    )
    eval_freq: PositiveInt = Field(
        default=1000,
        description="Steps between evaluations of the configured metrics",
    )
    slow_eval_freq: PositiveInt = Field(
        default=5000,
        description="Steps between evaluations of the slow metrics and the figures",
    )
    slow_eval_on_first_step: bool = Field(
        default=True,
        description="Also run the slow evaluation at step 0",
    )
    eval_batch_size: PositiveInt = Field(default=4096, description="Examples per evaluation batch")
    n_eval_steps: PositiveInt = Field(default=1, description="Evaluation batches per evaluation")
    save_freq: PositiveInt | None = Field(
        default=None,
        description="Steps between checkpoints; null: only the final one",
    )
    keep_last_checkpoints: PositiveInt = Field(
        default=3,
        description="How many of the newest checkpoints a run keeps (and always the final one).",
    )
    ci_alive_threshold: Probability = Field(
        default=0.1,
        description="CI above which a subcomponent counts as active (CI-L0, alive counts)",
    )
    n_examples_until_dead: PositiveInt = Field(
        default=1_000_000,
        description="Examples without activity after which a subcomponent counts as dead",
    )

    # --- evaluation selection ---
    metrics: list[MetricSpec] = Field(
        default_factory=lambda: [MetricSpec(name="ci_l0")],
        description="Metrics computed at evaluations ({name, params} entries)",
    )
    figures: list[MetricSpec] = Field(
        default_factory=list,
        description="Figures drawn at slow evaluations ({name, params} entries)",
    )

    # --- Weights & Biases (no tracking while wandb_project is null; see spd/tracking/wandb_sink.py) ---
    wandb_project: str | None = Field(
        default=None,
        description="W&B project to log to; null: no W&B tracking",
    )
    wandb_entity: str | None = Field(
        default=None,
        description="W&B team or user; null: the logged-in user's default",
    )
    wandb_run_name: str | None = Field(default=None, description="Fixed run name (else generated)")
    wandb_run_name_prefix: str = Field(default="", description="Put before a generated run name")
    wandb_group: str | None = Field(default=None, description="Set by the launcher for sweeps")
    wandb_tags: list[str] = Field(default_factory=list, description="Set by the launcher")

    # --- target model ---
    pretrained_model_class: str = Field(
        description="Import path of the target's class, e.g. spd.experiments.tms.models.TMSModel"
    )
    pretrained_model_path: str | None = Field(
        default=None,
        description="Local checkpoint of the target, or 'wandb:<entity>/<project>/runs/<run id>'",
    )
    pretrained_model_name_hf: str | None = Field(
        default=None,
        description=(
            "Hugging Face hub id or local directory of the target (when pretrained_model_path "
            "is null)"
        ),
    )
    pretrained_model_output_attr: str | None = Field(
        default=None,
        description=(
            "Attribute of the target's output holding the tensor to reconstruct (e.g. logits); "
            "null: the output itself"
        ),
    )

    task_config: TaskConfig = Field(
        description="The data: a block selected by its task_name (tms, resid_mlp, lm or generic)",
    )
    empty_text_allowed: ClassVar[frozenset[str]] = frozenset({"wandb_run_name_prefix"})

    @field_validator("run_name")
    @classmethod
    def _check_run_name(cls, name: str | None) -> str | None:
        # It becomes a directory name: no path separators, no control characters.
        if name is not None and (
            "/" in name or "\\" in name or name in (".", "..") or not name.isprintable()
        ):
            raise ValueError(
                f"run_name {name!r} must be usable as a directory name (no '/', '\\', control characters)"
            )
        return name

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        check_device_string(device)
        return device

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        if self.batch_size % self.gradient_accumulation_steps != 0:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by "
                f"gradient_accumulation_steps ({self.gradient_accumulation_steps})"
            )
        if self.lr_schedule == "exponential" and self.lr_exponential_halflife is None:
            raise ValueError("lr_schedule 'exponential' needs lr_exponential_halflife (in steps)")
        if self.p_anneal_final_p is not None and self.p_anneal_end_frac < self.p_anneal_start_frac:
            raise ValueError("p_anneal_end_frac must not be smaller than p_anneal_start_frac")
        if self.pretrained_model_path is None and self.pretrained_model_name_hf is None:
            raise ValueError(
                "set pretrained_model_path (or pretrained_model_name_hf) to the target"
            )
        if not self.loss_coeffs:
            raise ValueError("every loss coefficient is null: nothing would be optimised")
        # Metric and figure names are checked against their registries here so that a typo fails
        # before any model is built.
        validate_specs(((s.name, s.params) for s in self.metrics), kind="metric")
        validate_specs(((s.name, s.params) for s in self.figures), kind="figure")
        return self

    @property
    def microbatch_size(self) -> int:
        return self.batch_size // self.gradient_accumulation_steps

    @property
    def loss_coeffs(self) -> dict[str, float]:
        """The loss terms that are computed (every `<name>_coeff` field that is not null), by
        name, with their coefficients; `spd.losses.terms.LOSS_TERMS` computes them."""
        fields = type(self).model_fields
        return {
            name.removesuffix(LOSS_COEFF_SUFFIX): value
            for name in fields
            if name.endswith(LOSS_COEFF_SUFFIX) and (value := getattr(self, name)) is not None
        }


# Every block of a config file, by where it sits in the file (`spd-config fields BLOCK`).
CONFIG_BLOCKS: dict[str, type[StrictModel]] = {
    "config": Config,
    "task_config.tms": TMSTaskConfig,
    "task_config.resid_mlp": ResidMLPTaskConfig,
    "task_config.lm": LMTaskConfig,
    "task_config.generic": GenericTaskConfig,
    "metrics": MetricSpec,
}
