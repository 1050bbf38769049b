"""Stage 12, the console scripts: `spd-run` (`run`), `spd-report` (`report`) and `spd-config`
(`config_cli`).

May import: every stage.
"""
