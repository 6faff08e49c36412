"""Ablation sweeps: their declaration as data (`spec`), the runner (`run`, and
`python -m ddpm_jax.sweep`) and the report (`report`, `python -m ddpm_jax.sweep.report`)."""
