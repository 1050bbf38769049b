"""What `spd-run` needs to launch many runs: sweeps, git snapshots, SLURM job arrays, reports."""
