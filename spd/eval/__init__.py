"""Stage 7, evaluation: one evaluation pass (`evaluate`) over an `EvalContext` (`context`), the
built-in metrics (`metrics`, `lm_metrics`, the adversarial `pgd_metrics`, the per-layer-group
`group_ce_kl` and `group_ci_l0` over the groups of `layer_groups`) and figures (`figures`), and
the CI-pattern scores they share (`ci_patterns`). Metrics and figures register themselves with
`spd.config.evaluators`.

May import: every stage up to `spd.losses`.
"""
