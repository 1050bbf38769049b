"""Stage 1, configuration: the typed `Config` (`schema`), reading YAML with overrides (`loading`),
the registries of named metrics and figures a config may select (`evaluators`), resolving
`device: auto` (`device`), and translating the original implementation's configs
(`original_format`).

May import: `spd.errors`. (The evaluator registry loads the built-in metric and figure modules by
name when a config is validated: they register themselves, as any plug-in would.)
"""
