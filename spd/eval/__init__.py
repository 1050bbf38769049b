"""Stage 7, evaluation: one evaluation pass (`evaluate`) over an `EvalContext` (`context`), the
built-in metrics (`metrics`, `lm_metrics`) and figures (`figures`), and the CI-pattern scores they
share (`ci_patterns`). Metrics and figures register themselves with `spd.config.evaluators`.

May import: every stage up to `spd.losses`.
"""
