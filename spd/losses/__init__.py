"""Stage 6, the method's loss terms: one module per term under `terms/` (each registers a
`term.LossTerm` into `spd.config.loss_registry.LOSS_TERMS`), what they read (`inputs`), the
stochastic masks (`masks`), the routers of the subset terms (`routing`), the output divergence
(`divergence`), their weighted sum (`total`), one micro-batch's loss (`batch`), its bf16 autocast
(`precision`), the cut of a sparse toy batch to its live rows that keeps every loss exact
(`row_selection`), fresh PGD's adversarial sources and signed ascent (`adversarial_sources`),
and persistent PGD's sources, the state its terms keep between steps
(`persistent_pgd`).

May import: every stage up to `spd.models`.
"""
