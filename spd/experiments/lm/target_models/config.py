"""The sizes and options of a target language model: one `StrictModel` per architecture.

The same block is the `model:` section of a pretraining config (`spd-pretrain`) and, written as
JSON, the `config.json` of a saved model directory. `architecture` selects the block.
"""

from typing import Annotated, Literal, Self

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from spd.config.schema import StrictModel


class TargetLMConfigBase(StrictModel):
    """What both architectures share: a decoder-only transformer of pre-norm blocks."""

    vocab_size: PositiveInt | None = Field(
        default=None,
        description="Rows of the token embedding; null takes the tokenizer's size when "
        "pretraining starts (a saved model always holds the number)",
    )
    d_model: PositiveInt = Field(description="Width of the residual stream")
    n_layers: PositiveInt = Field(description="Number of transformer blocks")
    n_heads: PositiveInt = Field(description="Attention heads per block (d_model / n_heads each)")
    d_mlp: PositiveInt = Field(description="Hidden width of each block's two-matrix MLP")
    max_seq_len: PositiveInt = Field(
        description="Longest sequence the model takes (the context it is trained and decomposed at)"
    )
    tie_embeddings: bool = Field(
        description="Whether the unembedding (lm_head) shares the token embedding's matrix"
    )
    bias: bool = Field(description="Whether the attention and MLP matrices have biases")
    norm_eps: PositiveFloat = Field(description="Epsilon of the normalisation layers")
    activation: Literal["gelu", "gelu_tanh"] = Field(
        description="The MLP's nonlinearity: exact GELU, or its tanh approximation (GPT-2's)"
    )
    init_std: PositiveFloat = Field(
        default=0.02, description="Standard deviation of the normal initialisation of every matrix"
    )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_heads

    @model_validator(mode="after")
    def _check_heads(self) -> Self:
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model {self.d_model} does not split into {self.n_heads} heads; make d_model "
                "a multiple of n_heads"
            )
        return self


class LlamaLMConfig(TargetLMConfigBase):
    """A Llama-style model: RMSNorm, rotary positions, no biases, a plain GELU MLP."""

    architecture: Literal["llama"] = Field(description="Selects this architecture")
    bias: bool = Field(
        default=False, description="Whether the attention and MLP matrices have biases"
    )
    norm_eps: PositiveFloat = Field(default=1e-5, description="Epsilon of the RMSNorm layers")
    activation: Literal["gelu", "gelu_tanh"] = Field(
        default="gelu", description="The MLP's nonlinearity (exact GELU, or its tanh approximation)"
    )
    tie_embeddings: bool = Field(
        default=True,
        description="Whether the unembedding (lm_head) shares the token embedding's matrix",
    )
    rope_theta: PositiveFloat = Field(
        default=10_000.0, description="Base of the rotary embedding's frequencies"
    )

    @model_validator(mode="after")
    def _check_rotary(self) -> Self:
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"rotary positions need an even head width, got d_model / n_heads = {self.head_dim}"
            )
        return self


class GPT2LMConfig(TargetLMConfigBase):
    """A GPT-2-style model: LayerNorm, learned positions, biases, a tanh-GELU MLP."""

    architecture: Literal["gpt2"] = Field(description="Selects this architecture")
    bias: bool = Field(
        default=True, description="Whether the attention and MLP matrices have biases"
    )
    norm_eps: PositiveFloat = Field(default=1e-5, description="Epsilon of the LayerNorm layers")
    activation: Literal["gelu", "gelu_tanh"] = Field(
        default="gelu_tanh",
        description="The MLP's nonlinearity (exact GELU, or its tanh approximation as in GPT-2)",
    )
    tie_embeddings: bool = Field(
        default=True,
        description="Whether the unembedding (lm_head) shares the token embedding's matrix",
    )


TargetLMConfig = Annotated[LlamaLMConfig | GPT2LMConfig, Field(discriminator="architecture")]
