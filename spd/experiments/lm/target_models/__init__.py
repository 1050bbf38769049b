"""Target language models of our own for whole-model decompositions, and their configs.

`LlamaLM` (RMSNorm, rotary, plain GELU MLP `c_fc`/`down_proj`) and `GPT2LM` (LayerNorm, learned
positions); `TargetLM.from_pretrained(dir)` loads either, `save_pretrained(dir)` writes
config.json + model.safetensors. `spd-pretrain` (spd/experiments/lm/pretrain/) trains them.
"""

from spd.experiments.lm.target_models.config import GPT2LMConfig, LlamaLMConfig, TargetLMConfig
from spd.experiments.lm.target_models.models import (
    GPT2LM,
    LlamaLM,
    TargetLM,
    read_model_config,
)

__all__ = [
    "GPT2LM",
    "GPT2LMConfig",
    "LlamaLM",
    "LlamaLMConfig",
    "TargetLM",
    "TargetLMConfig",
    "read_model_config",
]
