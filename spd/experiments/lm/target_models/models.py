"""The target language models: `LlamaLM` and `GPT2LM`, saved to and loaded from a directory.

Both map token ids (batch, seq) to next-token logits (batch, seq, vocab) and share one layout of
module names, so the same decomposition patterns fit either:

    embed_tokens                      token embedding
    pos_embed                         learned positions (GPT2LM only)
    layers.<i>.attn_norm              RMSNorm (Llama) / LayerNorm (GPT-2)
    layers.<i>.attn.{q,k,v,o}_proj    attention matrices (rotary positions in the Llama)
    layers.<i>.mlp_norm
    layers.<i>.mlp.{c_fc,down_proj}   the two MLP matrices around a GELU
    final_norm
    lm_head                           unembedding (its weight is embed_tokens' when tied)

A model directory holds `config.json` (the architecture's config block, see `config.py`) and
`model.safetensors` (the weights; a tied lm_head is stored once, as embed_tokens). Loading reads
JSON and safetensors only: nothing in the directory can run code. `pretrained_model_class:
spd.experiments.lm.target_models.LlamaLM` (or `GPT2LM`, or `TargetLM` for either) with the
directory as `pretrained_model_name_hf` makes one a decomposition target.
"""

import json
from pathlib import Path
from typing import ClassVar, Self

import torch
from jaxtyping import Float, Int
from pydantic import TypeAdapter, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from spd.errors import SPDUserError, one_line, write_guard
from spd.experiments.lm.target_models.config import GPT2LMConfig, LlamaLMConfig, TargetLMConfig
from spd.experiments.lm.target_models.layers import MLP, Block, CausalSelfAttention, RMSNorm

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Marks a config.json as ours (transformers' own configs have `model_type` instead).
FORMAT_KEY = "spd_target_lm"
FORMAT_VERSION = 1
TIED_KEY = "lm_head.weight"
_CONFIG_ADAPTER: TypeAdapter[LlamaLMConfig | GPT2LMConfig] = TypeAdapter(TargetLMConfig)


class TargetLM(nn.Module):
    """A decoder-only transformer LM (see the module docstring for its modules).

    Build one with `TargetLM.build(config)` (the architecture's class) or load one with
    `TargetLM.from_pretrained(directory)`; `save_pretrained(directory)` writes it.
    """

    architecture: ClassVar[str] = ""
    learned_positions: ClassVar[bool] = False
    config: LlamaLMConfig | GPT2LMConfig

    def __init__(self, config: LlamaLMConfig | GPT2LMConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise SPDUserError("model.vocab_size is not set; give the vocabulary size")
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        if self.learned_positions:
            self.pos_embed = nn.Embedding(config.max_seq_len, config.d_model)
        self.layers = nn.ModuleList(self._block() for _ in range(config.n_layers))
        self.final_norm = self._norm()
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()

    def _norm(self) -> nn.Module:
        raise NotImplementedError

    def _rope_theta(self) -> float | None:
        return None

    def _block(self) -> Block:
        c = self.config
        attn = CausalSelfAttention(c.d_model, c.n_heads, c.bias, self._rope_theta())
        mlp = MLP(c.d_model, c.d_mlp, c.bias, c.activation == "gelu_tanh")
        return Block(self._norm(), attn, self._norm(), mlp)

    def reset_parameters(self) -> None:
        """Normal(0, init_std) matrices and embeddings, zero biases, unit norm gains; the
        residual-writing matrices (o_proj, down_proj) scaled by 1/√(2·n_layers) as in GPT-2."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                scale = 1.0
                if name.endswith(("o_proj", "down_proj")):
                    scale = (2 * self.config.n_layers) ** -0.5
                nn.init.normal_(module.weight, std=std * scale)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if self.config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding (what the LM task reads the vocabulary size from)."""
        return self.embed_tokens

    def embed(self, input_ids: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq d"]:
        """The residual stream's input: token embeddings (plus positions, where learned)."""
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq vocab"]:
        """Next-token logits of every position (causal: position t sees tokens 0..t)."""
        if input_ids.shape[1] > self.config.max_seq_len:
            raise SPDUserError(
                f"a sequence of {input_ids.shape[1]} tokens is longer than the model's "
                f"max_seq_len {self.config.max_seq_len}"
            )
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.final_norm(x))

    @staticmethod
    def build(config: LlamaLMConfig | GPT2LMConfig) -> "TargetLM":
        """A freshly initialised model of the architecture `config` names (seed torch first)."""
        return LlamaLM(config) if isinstance(config, LlamaLMConfig) else GPT2LM(config)

    def save_pretrained(self, directory: Path | str) -> None:
        """Write config.json and model.safetensors into `directory` (created if missing)."""
        directory = Path(directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.config.tie_embeddings:
            del state[TIED_KEY]
        config = {FORMAT_KEY: FORMAT_VERSION, **self.config.model_dump(mode="json")}
        with write_guard("the model directory", directory):
            directory.mkdir(parents=True, exist_ok=True)
            save_file(state, str(directory / WEIGHTS_FILE))
            (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: Path | str) -> Self:
        """The model saved in `directory` (on the CPU, in eval mode).

        Called on `TargetLM` it returns whichever architecture the directory holds; called on
        `LlamaLM` or `GPT2LM` it refuses the other one.
        """
        directory = Path(directory)
        config = read_model_config(directory)
        if cls.architecture and config.architecture != cls.architecture:
            raise SPDUserError(
                f"{directory} holds a '{config.architecture}' model, not a '{cls.architecture}' "
                f"one; load it with spd.experiments.lm.target_models.TargetLM"
            )
        model = TargetLM.build(config)
        model.load_state_dict(_read_weights(directory, model))
        assert isinstance(model, cls)
        return model.eval()


class LlamaLM(TargetLM):
    """Llama-style: RMSNorm, rotary positions on q and k, no biases, a plain GELU MLP.

    Not a `transformers.LlamaForCausalLM`: that model's MLP is gated (gate, up and down
    matrices, SiLU), this one has two matrices around a GELU, so no checkpoint maps exactly.
    """

    architecture: ClassVar[str] = "llama"

    def _norm(self) -> nn.Module:
        return RMSNorm(self.config.d_model, self.config.norm_eps)

    def _rope_theta(self) -> float | None:
        assert isinstance(self.config, LlamaLMConfig)
        return self.config.rope_theta


class GPT2LM(TargetLM):
    """GPT-2-style: LayerNorm, a learned position table (`pos_embed`), biases, tanh-GELU MLP."""

    architecture: ClassVar[str] = "gpt2"
    learned_positions: ClassVar[bool] = True

    def _norm(self) -> nn.Module:
        return nn.LayerNorm(self.config.d_model, eps=self.config.norm_eps)

    def embed(self, input_ids: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq d"]:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.embed_tokens(input_ids) + self.pos_embed(positions)


def read_model_config(directory: Path) -> LlamaLMConfig | GPT2LMConfig:
    """The config of the model saved in `directory`, validated (one-line errors)."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise SPDUserError(
            f"{directory} is not a saved target model ({CONFIG_FILE} missing); pretrain one with "
            "spd-pretrain or give the model's directory"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SPDUserError(one_line(f"cannot read {path}: {err}")) from None
    if not isinstance(data, dict) or data.pop(FORMAT_KEY, None) != FORMAT_VERSION:
        raise SPDUserError(
            f"{path} is not the config of an spd target model (no '{FORMAT_KEY}: "
            f"{FORMAT_VERSION}' entry); a transformers model loads with its own class"
        )
    try:
        config = _CONFIG_ADAPTER.validate_python(data)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise SPDUserError(one_line(f"{path}: '{key}': {first['msg']}")) from None
    if config.vocab_size is None:
        raise SPDUserError(f"{path}: vocab_size is missing")
    return config


def _read_weights(directory: Path, model: TargetLM) -> dict[str, Tensor]:
    """The weights in `directory`, checked against the model's parameters by name and shape."""
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise SPDUserError(f"{directory} has no {WEIGHTS_FILE}; the model was not saved completely")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise SPDUserError(one_line(f"cannot read {path}: {err}")) from None
    expected = model.state_dict()
    if model.config.tie_embeddings:
        state[TIED_KEY] = state.get("embed_tokens.weight", torch.empty(0))
    missing = sorted(expected.keys() - state.keys())
    extra = sorted(state.keys() - expected.keys())
    wrong = [k for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape]
    if missing or extra or wrong:
        raise SPDUserError(
            f"{path} does not fit its {CONFIG_FILE}: missing {missing[:3]}, unexpected "
            f"{extra[:3]}, wrong shape {sorted(wrong)[:3]}"
        )
    return state
