"""Evaluators, one small module per metric, each `run(params) -> dict of scalars`; the config
chooses them (`config.evals`) and `suite` runs them together; `results` writes what they find."""
