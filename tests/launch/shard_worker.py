"""One rank of the per-task data-split test (tests/launch/test_data_parallel.py), under torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node=2 shard_worker.py OUT_DIR CONFIG...

For each config file, in a real gloo process group: the task's data streams for this rank's
`DataShard` (computed as `run_decomposition` does), the first two training micro-batches and the
first eval batch, and the global row counts summed over the ranks with an all-reduce. Saves them
to OUT_DIR/rank<r>.pt, keyed by task name.
"""

import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from spd.config.loading import load_config
from spd.experiments.tasks import get_task
from spd.loading.targets import load_target_model
from spd.train import distributed
from spd.train.data_shard import data_shard


def draw(config_path: Path) -> tuple[str, dict[str, object]]:
    """This rank's first batches of the config's task and the rows all ranks drew together."""
    config = load_config(config_path)
    task = get_task(config.task_config.task_name)
    if task.prepare is not None:
        config = task.prepare(config)
    target = load_target_model(config)
    shard = data_shard(config)
    train, evals = task.make_data(config, target, torch.device("cpu"), shard)
    batches = [next(train), next(train)]
    eval_batch = next(evals)
    rows = torch.tensor([batches[0].shape[0], eval_batch.shape[0]])
    dist.all_reduce(rows)
    return task.name, {
        "shard": asdict(shard),
        "train": batches,
        "eval": eval_batch,
        "global_rows": rows.tolist(),
        "microbatch_size": config.microbatch_size,
        "eval_batch_size": config.eval_batch_size,
    }


def main() -> None:
    out_dir, configs = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    distributed.setup(torch.device("cpu"))
    rank = distributed.rank_info().rank
    drawn = dict(draw(path) for path in configs)
    torch.save(drawn, out_dir / f"rank{rank}.pt")
    distributed.teardown()


if __name__ == "__main__":
    main()
