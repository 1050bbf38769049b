"""Stage 11, what `spd-run` needs to launch many runs: its options (`options`), a launch from start
to end (`launcher`), planning (`plan`), sweeps (`sweeps`), command lines (`commands`), git snapshots
(`git_snapshot`), SLURM jobs (`slurm`: one `JobSpec`, rendered and submitted by one function
each; `submission`: the launch's array and report jobs; `analysis_job`: the `--analyze` job),
running runs here with signals passed on and exit codes mapped (`local_runs`), the launch manifest
and its summary page (`report`, rendered by `spd.tracking.report`), what a launch entry runs
(`run_sources`).

May import: every stage up to `spd.experiments`.
"""
