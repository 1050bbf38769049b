"""Stage 11, what `spd-run` needs to launch many runs: planning (`plan`), sweeps (`sweeps`), command
lines (`commands`), git snapshots (`git_snapshot`), SLURM job arrays (`slurm`), launch reports
(`report`).

May import: every stage up to `spd.experiments`.
"""
