"""Stage 12, the console scripts: `spd-run` (`run`), `spd-report` (`report`) and `spd-config`
(`config_cli`). (`spd-pretrain` is the language-model task's own: spd/experiments/lm/pretrain/cli.py.)

May import: every stage.
"""
