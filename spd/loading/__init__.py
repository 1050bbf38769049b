"""Stage 2, loading inputs: target models by import path (`targets`), local and `wandb:` run paths
(`run_paths`), guarded Hugging Face hub access (`hf_hub`), `.env` files (`env_files`), the original
implementation's target files (`original_targets`) and run configs with the tying such a target
implies (`run_config`).

May import: `spd.errors`, `spd.config`.
"""
