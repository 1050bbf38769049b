"""The tiny offline LM example the LM and analysis tests build (seconds on a CPU)."""

from spd.experiments.lm.make_offline_example import ExampleSpec

SEQ_LEN = 32
TINY = ExampleSpec(
    n_train_stories=300,
    n_test_stories=40,
    vocab_size=512,
    hidden_size=32,
    intermediate_size=64,
    n_layers=2,
    n_heads=2,
    seq_len=SEQ_LEN,
    batch_size=8,
    steps=40,
    n_eval_batches=2,
)
