"""A `GPT2LM` as the `transformers.GPT2LMHeadModel` that computes the same function.

GPT-2 is the one architecture here that a Hugging Face class holds exactly: its attention fuses
q, k and v into one `Conv1D` (`c_attn`, weights stored input-major), so the export concatenates
our three transposed matrices; every other weight is a transpose or a copy. The Llama has no
such twin (transformers' Llama MLP is gated), see `LlamaLM`.
"""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from spd.errors import SPDUserError
from spd.experiments.lm.target_models.models import GPT2LM


def to_hf_gpt2(model: GPT2LM) -> GPT2LMHeadModel:
    """The transformers GPT-2 with `model`'s weights (same logits up to float rounding).

    Needs what GPT-2 itself has: tied embeddings, biases and the tanh-approximated GELU.
    """
    c = model.config
    if not (c.tie_embeddings and c.bias and c.activation == "gelu_tanh"):
        raise SPDUserError(
            "a GPT-2 export needs tie_embeddings: true, bias: true and activation: gelu_tanh"
        )
    hf_config = GPT2Config(
        vocab_size=model.embed_tokens.num_embeddings,
        n_positions=c.max_seq_len,
        n_embd=c.d_model,
        n_layer=c.n_layers,
        n_head=c.n_heads,
        n_inner=c.d_mlp,
        activation_function="gelu_new",
        layer_norm_epsilon=c.norm_eps,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
    )
    ours = model.state_dict()
    state = {
        "transformer.wte.weight": ours["embed_tokens.weight"],
        "transformer.wpe.weight": ours["pos_embed.weight"],
        "transformer.ln_f.weight": ours["final_norm.weight"],
        "transformer.ln_f.bias": ours["final_norm.bias"],
        "lm_head.weight": ours["embed_tokens.weight"],
    }
    for i in range(c.n_layers):
        layer, hf = f"layers.{i}.", f"transformer.h.{i}."
        for ours_name, hf_name in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            for kind in ("weight", "bias"):
                state[f"{hf}{hf_name}.{kind}"] = ours[f"{layer}{ours_name}.{kind}"]
        qkv = [f"{layer}attn.{p}_proj" for p in "qkv"]
        state[hf + "attn.c_attn.weight"] = torch.cat([ours[p + ".weight"].T for p in qkv], dim=1)
        state[hf + "attn.c_attn.bias"] = torch.cat([ours[p + ".bias"] for p in qkv])
        # Conv1D stores (in, out): the transpose of a Linear's weight.
        for ours_name, hf_name in (
            ("attn.o_proj", "attn.c_proj"),
            ("mlp.c_fc", "mlp.c_fc"),
            ("mlp.down_proj", "mlp.c_proj"),
        ):
            state[f"{hf}{hf_name}.weight"] = ours[f"{layer}{ours_name}.weight"].T
            state[f"{hf}{hf_name}.bias"] = ours[f"{layer}{ours_name}.bias"]
    hf_model = GPT2LMHeadModel(hf_config)
    hf_model.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return hf_model.eval()
