"""Each rank's share of a run's data, worked out once for every task.

Under data parallelism every rank draws its own part of each micro-batch and eval batch: the
global sizes are divided by the world size, and the rank's streams get a seed of their own. The
code that asks a task for its data (`spd.experiments.run_decomposition`) computes a `DataShard`
and passes it in, so a task never reads the process group itself. Rank 0 of a single process gets
the config's own seed and sizes, so a run without data parallelism draws exactly what it did
before shards existed.
"""

from dataclasses import dataclass

from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.train import distributed
from spd.train.distributed import RankInfo


@dataclass(frozen=True)
class DataShard:
    """What one rank draws: `microbatch_size` rows per training micro-batch and
    `eval_batch_size` per eval batch (this rank's share of the global sizes), from streams seeded
    with `seed` (the run's seed on rank 0). A task whose data is a fixed sequence of records (text
    documents) rather than seeded draws takes every `world_size`-th record from offset `rank`."""

    rank: int
    world_size: int
    seed: int
    microbatch_size: int
    eval_batch_size: int


def data_shard(config: Config, rank: RankInfo | None = None) -> DataShard:
    """This rank's share of `config`'s batches (`rank`: the process's own place by default).

    A micro-batch (batch_size / gradient_accumulation_steps) or eval batch that does not split
    evenly over the ranks is an `SPDUserError`, raised before anything is loaded or written.
    """
    info = distributed.rank_info() if rank is None else rank
    world = info.world_size
    for what, size, fix in (
        ("micro-batch", config.microbatch_size, "batch_size / gradient_accumulation_steps"),
        ("eval_batch_size", config.eval_batch_size, "eval_batch_size"),
    ):
        if size % world != 0:
            raise SPDUserError(
                f"{what} of {size} does not split evenly over {world} data-parallel ranks; "
                f"make {fix} a multiple of {world} or change the number of ranks"
            )
    return DataShard(
        rank=info.rank,
        world_size=world,
        seed=distributed.rank_seed(config.seed, info.rank),
        microbatch_size=config.microbatch_size // world,
        eval_batch_size=config.eval_batch_size // world,
    )
