"""The built-in loss terms, one module each; `spd.config.loss_registry.LOSS_TERMS` lists them.

Each module defines the term's parameter block, its compute function (also usable directly, as
the tests do) and registers one `spd.losses.term.LossTerm`.
"""
