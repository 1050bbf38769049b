"""The `task_config` block of the `lm` task (its own module: `sources.py` and the offline
example's builder read it as well as `task.py`)."""

from typing import Literal, Self

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from spd.config.schema import TaskConfig


class LMTaskConfig(TaskConfig):
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

    @property
    def sequence_length(self) -> int:
        """Tokens per training sequence (`max_seq_len`)."""
        return self.max_seq_len

    @model_validator(mode="after")
    def _check_splits(self) -> Self:
        if self.train_split == self.eval_split:
            raise ValueError(
                f"train_split and eval_split are both '{self.train_split}'; evaluate on held-out "
                "data (another split, or a slice such as 'train[:99%]' / 'train[99%:]')"
            )
        return self
