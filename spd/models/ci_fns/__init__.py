"""The CI-function types, one module each (`mlp`, `vector_mlp`, `shared_mlp`, `global_shared_mlp`,
`global_shared_transformer`; `input_projection` is the first map the last three share); `base`
says what a type declares.

Each type module registers itself in `spd.config.ci_fn_registry.CI_FNS`, which names the built-in
modules and imports them on the first lookup.
"""
