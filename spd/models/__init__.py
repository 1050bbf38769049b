"""Stage 5, the decomposed model: components (`components`), the CI-function types (`ci_fns/`,
one module each, with the fused kernel of `mlp` in `scalar_mlp`), sigmoids (`sigmoids`) and the
`ComponentModel` wrapper with its builder and `from_pretrained` (`component_model`).

May import: `spd.errors`, `spd.config`, `spd.loading`, `spd.persistence`, `spd.data`.
"""
