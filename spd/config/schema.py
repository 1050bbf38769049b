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
    PrivateAttr,
    SerializeAsAny,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from spd.config.ci_fn_registry import CI_FNS
from spd.config.device import check_device_string
from spd.config.evaluators import validate_specs
from spd.config.flat_loss_keys import translate_flat_losses
from spd.config.loss_registry import LOSS_TERMS, validated_params
from spd.config.task_registry import TASKS

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
OptionalCoeff = NonNegativeFloat | None

SigmoidType = Literal["leaky_hard", "normal", "hard", "upper_leaky_hard", "swish_hard"]
LRSchedule = Literal["constant", "linear", "cosine", "exponential"]
OutputLossType = Literal["mse", "kl"]
Sampling = Literal["continuous", "binomial"]
TiedWeightsMode = Literal["shared_storage", "single_parameter"]
CompileMode = Literal["auto", "on", "off"]
MAX_RUN_NAME_BYTES = 200
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


class ModuleC(StrictModel):
    """The number of subcomponents of the decomposed modules one fnmatch pattern matches."""

    module_pattern: str = Field(
        description="fnmatch pattern over the decomposed module names (as target_module_patterns)"
    )
    C: PositiveInt = Field(description="Subcomponents of each module the pattern matches")


_NUMBER_ADAPTER: TypeAdapter[int] = TypeAdapter(PositiveInt)
_PAIRS_ADAPTER: TypeAdapter[list[ModuleC]] = TypeAdapter(list[ModuleC])


def _validate_C(value: Any, _union: ValidatorFunctionWrapHandler) -> int | list[ModuleC]:
    # Validated as the form it was written in, so that an error names that form's problem only
    # ('C' or 'C.0.C'), not those of both forms as the plain union would.
    if isinstance(value, list):
        return _PAIRS_ADAPTER.validate_python(value)
    return _NUMBER_ADAPTER.validate_python(value)


# One number for every module, or `{module_pattern, C}` pairs.
ModuleCSpec = Annotated[
    PositiveInt | list[ModuleC],
    WrapValidator(_validate_C),
]


class LossSpec(StrictModel):
    """One loss term of `losses:`: its registry name, coefficient and parameter block."""

    name: str = Field(description="Name of the loss term (spd/config/loss_registry.py, LOSS_TERMS)")
    coeff: OptionalCoeff = Field(description="Weight of the term in the loss; null: not computed")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="The term's parameters, checked against its parameter block",
    )
    _params: BaseModel | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _fill_in_params(cls, data: Any) -> Any:
        # Every parameter written out, defaults included: two entries that mean the same compare
        # equal (resume checks) and final_config.yaml records what the run used.
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            params = data.get("params", {})
            if isinstance(params, dict):
                filled = validated_params(data["name"], params).model_dump(mode="json")
                return {**data, "params": filled}
        return data

    @model_validator(mode="after")
    def _check_params(self) -> Self:
        self._params = validated_params(self.name, self.params)
        return self

    @property
    def validated_params(self) -> BaseModel:
        """`params` as the term's validated parameter block (defaults filled in)."""
        assert self._params is not None, "set by the validator"
        return self._params


class TaskConfig(StrictModel):
    """Base of every task's `task_config` block; each task's own block lives in its folder.

    A subclass declares `task_name: Literal["<its task>"]` (with that default) and the fields of
    its data; `Config` validates a block with the class of the task its `task_name` names
    (`spd.config.task_registry.TASKS`).
    """

    # Typed Any here only so that each subclass can narrow it to its own Literal: the blocks are
    # frozen, so the name is never reassigned, but a checker refuses to narrow a `str` field.
    task_name: Any = Field(description="Selects the task")

    @property
    def one_hot_value(self) -> float:
        """The input value of a one-hot example in the toy figures (`permuted_ci`, …) when a
        figure's config does not set one; a task whose features live on another scale overrides
        it (TMS: 1, a full feature)."""
        return 0.75

    @property
    def sequence_length(self) -> int:
        """Positions per example (tokens per sequence for a language model; 1 for a vector)."""
        return 1


def task_config_class(name: object) -> type[TaskConfig]:
    """The block of the task registered as `name`; ValueError naming the registered tasks."""
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered tasks: {', '.join(TASKS.names())}")
    block = TASKS.get(name).config_class
    assert issubclass(block, TaskConfig), f"task '{name}' has a block that is no TaskConfig"
    return block


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
            "off: eager; auto: compile only where a measured case (device, target class, C, batch "
            "size) repays the compile time within the run's steps, eager elsewhere "
            "(spd/train/compile_choice.py; docs/benchmarks.md, Compilation)."
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
    C: ModuleCSpec = Field(
        description=(
            "Subcomponents per decomposed matrix: one number for every module, or "
            "[{module_pattern, C}] pairs, each decomposed module matched by exactly one pattern"
        )
    )
    target_module_patterns: list[str] = Field(
        min_length=1,
        description=(
            "fnmatch patterns of the module names to decompose (Linear, Embedding or GPT-2 Conv1D)"
        ),
    )
    ci_fn_type: str = Field(
        default="mlp",
        description=(
            "CI-function type (spd/models/ci_fns/): mlp (one small MLP per subcomponent on its "
            "scalar inner activation), vector_mlp (one per subcomponent on the layer's whole "
            "input), shared_mlp (one per layer, input to all its C), global_shared_mlp (one MLP "
            "over every layer's input) or global_shared_transformer (one transformer over every "
            "layer's input, attending over the sequence); formerly gate_type"
        ),
    )
    ci_fn_hidden_dims: list[PositiveInt] = Field(
        default_factory=lambda: [16],
        description=(
            "Hidden widths of each CI function's MLP (GELU between layers; the "
            "global_shared_transformer takes its widths from ci_fn_params instead); formerly "
            "gate_hidden_dims"
        ),
    )
    ci_fn_params: dict[str, Any] = Field(
        default_factory=dict,
        validate_default=True,  # a type's own defaults are filled in
        description="Parameters of the CI-function type itself, checked against the type's own "
        "parameters ({} for all but global_shared_transformer: d_model, n_blocks, n_heads, "
        "mlp_hidden, rope_theta)",
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

    # --- loss terms (spd/config/loss_registry.py; each entry's params checked against its term) ---
    losses: list[LossSpec] = Field(
        default_factory=lambda: [
            LossSpec(name="faithfulness", coeff=1.0),
            LossSpec(name="stochastic_recon", coeff=1.0),
            LossSpec(name="importance_minimality", coeff=1e-3),
        ],
        description=(
            "The loss terms to optimise ({name, coeff, params} entries; a term not listed, or "
            "with coeff null, is not computed). `spd-config fields losses.<name>` lists a term's params"
        ),
    )
    output_loss_type: OutputLossType = Field(
        default="mse",
        description="Output divergence of the reconstruction losses: mse, or kl over the logits",
    )
    use_delta_component: bool = Field(
        default=False,
        description=(
            "Masked passes add the delta component m_Δ · (W − U V) a, one mask per position "
            "(stochastic passes: drawn like r; CI-masked passes: 0); docs/method.md"
        ),
    )
    sampling: Sampling = Field(
        default="continuous",
        description=(
            "The random source r of the stochastic masks g + (1 − g) r: continuous, U(0, 1); "
            "binomial, 0 or 1 with probability 1/2 each"
        ),
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
    faithfulness_warmup_steps: NonNegativeInt = Field(
        default=0,
        description="AdamW steps on the faithfulness loss alone (U and V only) before a fresh run",
    )
    faithfulness_warmup_lr: PositiveFloat = Field(
        default=1e-3, description="Learning rate of the faithfulness warm-up's own AdamW"
    )
    faithfulness_warmup_weight_decay: NonNegativeFloat = Field(
        default=0.0, description="Weight decay of the faithfulness warm-up's own AdamW"
    )
    grad_clip_norm_components: PositiveFloat | None = Field(
        default=None,
        description="Clip the global gradient norm of U and V to this before each step; null: no clip",
    )
    grad_clip_norm_ci_fns: PositiveFloat | None = Field(
        default=None,
        description="Clip the global gradient norm of the CI functions to this; null: no clip",
    )
    autocast_bf16: bool = Field(
        default=False,
        description="Run a step's forward passes under bf16 autocast (fp32 weights and losses)",
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

    # SerializeAsAny: a dump writes the task's own fields, not only those of the base class.
    task_config: SerializeAsAny[TaskConfig] = Field(
        description=(
            "The data: a block selected by its task_name; `spd-config fields "
            "task_config.<task_name>` lists each task's keys"
        ),
    )
    empty_text_allowed: ClassVar[frozenset[str]] = frozenset({"wandb_run_name_prefix"})

    @model_validator(mode="before")
    @classmethod
    def _translate_flat_losses(cls, data: Any) -> Any:
        # Configs built in code or stored by earlier versions may use the flat loss keys; the
        # loader translates files itself first, printing a warning line per key.
        return translate_flat_losses(data)[0] if isinstance(data, dict) else data

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
        # The directory is "<YYYYmmdd-HHMMSS>-<run_name>[-N]"; most file systems allow 255 bytes.
        if name is not None and len(name.encode()) > MAX_RUN_NAME_BYTES:
            raise ValueError(
                f"run_name is {len(name.encode())} bytes long; at most {MAX_RUN_NAME_BYTES} fit in "
                "a directory name, shorten it"
            )
        return name

    @field_validator("C")
    @classmethod
    def _check_module_C(cls, C: int | list[ModuleC]) -> int | list[ModuleC]:
        # What the target's module names are needed for is checked when the model is built
        # (`spd.config.module_c.module_C`).
        if isinstance(C, int):
            return C
        if not C:
            raise ValueError(
                "an empty list gives no module a C; give a number or {module_pattern, C} pairs"
            )
        patterns = [pair.module_pattern for pair in C]
        twice = sorted({p for p in patterns if patterns.count(p) > 1})
        if twice:
            raise ValueError(f"module_pattern '{twice[0]}' is listed twice; keep one pair")
        return C

    @field_validator("ci_fn_type")
    @classmethod
    def _check_ci_fn_type(cls, name: str) -> str:
        CI_FNS.get(name)  # ValueError listing the known types
        return name

    @field_validator("ci_fn_params")
    @classmethod
    def _check_ci_fn_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("ci_fn_type")
        if name is None:  # the type itself failed validation and is reported
            return params
        model = CI_FNS.get(name).params_model
        try:
            return model.model_validate(params).model_dump(mode="json")
        except ValidationError as err:
            problem = err.errors()[0]
            key = ".".join(str(p) for p in problem["loc"])
            accepted = ", ".join(model.model_fields) or "none"
            raise ValueError(
                f"CI-function type '{name}': '{key}': {problem['msg']} (its parameters: {accepted})"
            ) from None

    @field_validator("task_config", mode="before")
    @classmethod
    def _task_block(cls, value: Any) -> Any:
        # The block's class is the one its task registered; errors inside it keep their keys
        # (task_config.<key>), and so does an unknown or missing task_name.
        if not isinstance(value, dict):
            return value
        name = value.get("task_name")
        if isinstance(name, str) and name in TASKS:
            return task_config_class(name).model_validate(value)
        error: InitErrorDetails = (
            {"type": "missing", "loc": ("task_name",), "input": value}
            if "task_name" not in value
            else {
                "type": PydanticCustomError(
                    "unknown_task",
                    "unknown task {name}; registered tasks: {tasks}",
                    {"name": repr(name), "tasks": ", ".join(TASKS.names())},
                ),
                "loc": ("task_name",),
                "input": name,
            }
        )
        raise ValidationError.from_exception_data("task_config", [error])

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
        if self.pretrained_model_path is None and self.pretrained_model_name_hf is None:
            raise ValueError(
                "set pretrained_model_path (or pretrained_model_name_hf) to the target"
            )
        names = [spec.name for spec in self.losses]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"loss term '{twice[0]}' is listed twice in losses:; keep one entry")
        if not self.loss_coeffs:
            raise ValueError("every loss coefficient is null: nothing would be optimised")
        # Metric and figure names are checked against their registries here so that a typo fails
        # before any model is built.
        validate_specs(((s.name, s.params) for s in self.metrics), kind="metric")
        validate_specs(((s.name, s.params) for s in self.figures), kind="figure")
        # A metric's `n_batches` counts the eval batches an evaluation draws (pgd_recon_multibatch).
        for spec in self.metrics:
            n_batches = spec.params.get("n_batches")
            if isinstance(n_batches, int) and n_batches > self.n_eval_steps:
                raise ValueError(
                    f"metric '{spec.name}': n_batches {n_batches} is more than n_eval_steps "
                    f"({self.n_eval_steps}), the eval batches of an evaluation; raise n_eval_steps"
                )
        return self

    @property
    def microbatch_size(self) -> int:
        return self.batch_size // self.gradient_accumulation_steps

    @property
    def loss_coeffs(self) -> dict[str, float]:
        """The loss terms that are computed (every `losses:` entry whose coeff is not null), by
        name, in the order of `spd.config.loss_registry.LOSS_TERMS`, with their coefficients."""
        given = {spec.name: spec.coeff for spec in self.losses if spec.coeff is not None}
        return {term.name: given[term.name] for term in LOSS_TERMS.in_order() if term.name in given}

    def loss_params(self, name: str) -> BaseModel:
        """The validated parameter block of loss term `name`: its entry's, or the term's
        defaults when it is not listed (schatten follows importance_minimality's p schedule)."""
        for spec in self.losses:
            if spec.name == name:
                return spec.validated_params
        return validated_params(name, {})


# Every block of a config file but the tasks', by where it sits in the file (`config_blocks`).
CONFIG_BLOCKS: dict[str, type[StrictModel]] = {
    "config": Config,
    "metrics": MetricSpec,
    "losses": LossSpec,
    "C": ModuleC,
}


def config_blocks() -> dict[str, type[StrictModel]]:
    """Every block of a config file by where it sits (`spd-config fields BLOCK`), the registered
    tasks' blocks as `task_config.<task_name>`."""
    tasks = {f"task_config.{name}": task_config_class(name) for name in TASKS.names()}
    return {**CONFIG_BLOCKS, **tasks}
