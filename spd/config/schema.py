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

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class TMSTaskConfig(StrictModel):
    """Data of the toy-model-of-superposition experiments."""

    task_name: Literal["tms"] = "tms"
    feature_probability: Probability = 0.05
    data_generation_type: Literal["at_least_zero_active", "exactly_one_active"] = (
        "at_least_zero_active"
    )


class ResidMLPTaskConfig(StrictModel):
    """Data of the residual-MLP experiments."""

    task_name: Literal["resid_mlp"] = "resid_mlp"
    feature_probability: Probability = 0.01
    data_generation_type: Literal["at_least_zero_active", "exactly_one_active"] = (
        "at_least_zero_active"
    )


class LMTaskConfig(StrictModel):
    """Text data of the language-model experiments, tokenised into fixed-length sequences.

    `dataset_name` and `tokenizer_name` are Hugging Face hub ids or local paths (see
    `spd/experiments/lm/sources.py` for how a name is resolved).
    """

    task_name: Literal["lm"] = "lm"
    dataset_name: str = Field(description="Hub dataset id, or a local directory of data files")
    dataset_config_name: str | None = None
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    text_column: str = Field(description="Column holding the text of each document")
    train_split: str = "train"
    eval_split: str = "test"
    max_seq_len: PositiveInt = 512
    streaming: bool = False
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

    task_name: Literal["generic"] = "generic"
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
    run_name: str | None = None
    out_dir: str | None = Field(
        default=None,
        description="Output root for run directories; the SPD_OUT_DIR environment variable overrides it.",
    )

    # --- decomposition ---
    C: PositiveInt
    target_module_patterns: list[str] = Field(min_length=1)
    gate_type: GateType = "mlp"
    gate_hidden_dims: list[PositiveInt] = Field(default_factory=lambda: [16])
    sigmoid_type: SigmoidType = "leaky_hard"
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
    faithfulness_coeff: OptionalCoeff = 1.0
    stochastic_recon_coeff: OptionalCoeff = 1.0
    stochastic_recon_layerwise_coeff: OptionalCoeff = None
    recon_coeff: OptionalCoeff = None
    recon_layerwise_coeff: OptionalCoeff = None
    importance_minimality_coeff: OptionalCoeff = 1e-3
    schatten_coeff: OptionalCoeff = None
    out_recon_coeff: OptionalCoeff = None
    embedding_recon_coeff: OptionalCoeff = None
    is_embed_unembed_recon: bool = False
    output_loss_type: OutputLossType = "mse"
    n_mask_samples: PositiveInt = 1

    pnorm: PositiveFloat = 1.0
    p_anneal_start_frac: Fraction = 1.0
    p_anneal_final_p: PositiveFloat | None = None
    p_anneal_end_frac: Fraction = 1.0

    # --- optimisation ---
    lr: PositiveFloat = 1e-3
    steps: PositiveInt = 10_000
    batch_size: PositiveInt = 4096
    gradient_accumulation_steps: PositiveInt = 1
    lr_schedule: LRSchedule = "constant"
    lr_exponential_halflife: PositiveFloat | None = None
    lr_warmup_pct: Fraction = 0.0

    # --- bookkeeping frequencies ---
    train_log_freq: PositiveInt = 100
    eval_freq: PositiveInt = 1000
    slow_eval_freq: PositiveInt = 5000
    slow_eval_on_first_step: bool = True
    eval_batch_size: PositiveInt = 4096
    n_eval_steps: PositiveInt = 1
    save_freq: PositiveInt | None = None
    keep_last_checkpoints: PositiveInt = Field(
        default=3,
        description="How many of the newest checkpoints a run keeps (and always the final one).",
    )
    ci_alive_threshold: Probability = 0.1
    n_examples_until_dead: PositiveInt = 1_000_000

    # --- evaluation selection ---
    metrics: list[MetricSpec] = Field(default_factory=lambda: [MetricSpec(name="ci_l0")])
    figures: list[MetricSpec] = Field(default_factory=list)

    # --- Weights & Biases (no tracking while wandb_project is null; see spd/tracking/wandb_sink.py) ---
    wandb_project: str | None = None
    wandb_entity: str | None = None
    wandb_run_name: str | None = Field(default=None, description="Fixed run name (else generated)")
    wandb_run_name_prefix: str = Field(default="", description="Put before a generated run name")
    wandb_group: str | None = Field(default=None, description="Set by the launcher for sweeps")
    wandb_tags: list[str] = Field(default_factory=list, description="Set by the launcher")

    # --- target model ---
    pretrained_model_class: str = Field(
        description="Import path of the target's class, e.g. spd.experiments.tms.models.TMSModel"
    )
    pretrained_model_path: str | None = None
    pretrained_model_name_hf: str | None = None
    pretrained_model_output_attr: str | None = None

    task_config: TaskConfig

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
