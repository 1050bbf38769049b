"""Stage 1, configuration: the typed `Config` (`schema`), reading YAML with overrides (`loading`),
the registries a config validates against, all on `plugin_registry`: named metrics and figures
(`evaluators`), CI-function types (`ci_fn_registry`) and tasks (`task_registry`, whose
`task_config` blocks it validates); resolving `device: auto` (`device`), and translating the
original implementation's configs (`original_format`).

May import: `spd.errors`. (The registries load their built-in modules by name when a config is
validated: they register themselves, as any plug-in would.)
"""
