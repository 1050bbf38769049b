"""Decompose a Hugging Face causal language model.

    python spd/experiments/lm/lm_decomposition.py spd/experiments/lm/ss_emb_config.yaml
    python spd/experiments/lm/lm_decomposition.py spd/experiments/lm/lm_example_emb_config.yaml \\
        --override steps=500

The target is any `transformers` causal LM named by class path and loaded with
`from_pretrained(pretrained_model_name_hf)` (a hub id or a local directory); its `logits` are the
output. Model, tokenizer and dataset are resolved before anything is loaded
(`spd/experiments/lm/sources.py`): a local copy is used when there is one, and hub ids that
cannot be fetched here stop the run with one message.

At the end, the CE/KL figures and CI-L0 of the last evaluation are printed, logged to
metrics.jsonl (as `final/…`) and written to summary.json. The task itself is `task.py`.
"""

from spd.errors import run_cli
from spd.experiments.decompose import decompose_main


def main() -> None:
    decompose_main(__doc__ or "", script_task="lm")


if __name__ == "__main__":
    run_cli(main)
