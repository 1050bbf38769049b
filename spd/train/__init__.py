"""Stage 8, training: `optimize` (`optimize`), the learning-rate and p schedules (`schedules`), the
alive tracker (`alive_tracker`), data parallelism (`distributed`; each rank's share of the data,
`data_shard`), compilation of the step
(`compilation`), the faithfulness warm-up (`warmup`) and the training state stored in checkpoints (`training_state`).

May import: every stage up to `spd.eval`. Never `spd.tracking`, `spd.experiments` or `spd.launch`:
`optimize` is a plain library call.
"""
