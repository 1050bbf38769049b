"""Stage 12, the console scripts: `spd-run` (`run`) and `spd-report` (`report`).

May import: every stage.
"""
