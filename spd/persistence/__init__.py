"""Stage 3, what a run leaves on disk and how it survives: the run directory (`run_dir`), atomic
writes (`atomic_files`), checkpoints (`checkpoints`), finding a resume point (`resume`), RNG state
(`rng_state`) and stopping on a signal (`preemption`).

May import: `spd.errors`, `spd.config`, `spd.loading`.
"""
