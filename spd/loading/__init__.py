"""Stage 2, loading inputs: target models by import path (`targets`), local and `wandb:` run paths
(`run_paths`), guarded Hugging Face hub access (`hf_hub`) and `.env` files (`env_files`).

May import: `spd.errors`, `spd.config`.
"""
