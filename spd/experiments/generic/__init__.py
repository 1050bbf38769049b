"""The `generic` task: any target, fed by a data source named by import path in the config."""
