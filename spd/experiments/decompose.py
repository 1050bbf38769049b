"""Decompose the target of any config: the task is the one its `task_config.task_name` names.

    python spd/experiments/decompose.py CONFIG.yaml [--override k=v]... [--no-progress]
    python spd/experiments/decompose.py --resume RUN_DIR
    python spd/experiments/decompose.py CONFIG.yaml --run-dir DIR
    python spd/experiments/decompose.py CONFIG.yaml --dry-run       # check it all, write nothing

Tasks are looked up in `spd.experiments.tasks` (the built-in ones listed in
`spd/config/task_registry.py`, and any task a module registers). `spd-run --config CONFIG.yaml` runs this script. Exit codes as in
`spd.experiments.run_decomposition`.
"""

from spd.errors import SPDUserError, run_cli
from spd.experiments.dry_run import dry_run
from spd.experiments.run_decomposition import parse_args, run_decomposition
from spd.experiments.tasks import get_task


def decompose_main(description: str, script_task: str | None = None) -> None:
    """Parse the command line, then run the config's task; `script_task` pins a script to one task."""
    config, args = parse_args(description)
    name = config.task_config.task_name
    if script_task is not None and name != script_task:
        raise SPDUserError(
            f"this script runs task '{script_task}' but the config's task_config.task_name is "
            f"'{name}'; run it with spd/experiments/decompose.py"
        )
    task = get_task(name)
    if task.prepare is not None:
        config = task.prepare(config)
    if task.check is not None:
        task.check(config)
    if args.dry_run:
        dry_run(config, task.make_data, args.run_dir, args.resume)
        return
    run = run_decomposition(
        config,
        name,
        task.make_data,
        lambda result: task.summarize(result, config),
        show_progress=not args.no_progress,
        resume=args.resume,
        run_dir_path=args.run_dir,
    )
    if task.finish is not None and run.run_dir is not None and run.result.stopped_at is None:
        task.finish(run, config)


def main() -> None:
    decompose_main(__doc__ or "")


if __name__ == "__main__":
    run_cli(main)
