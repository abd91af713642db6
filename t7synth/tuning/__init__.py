"""Tuning: Optuna sweeps over ``fit`` runs (sweep files, studies, trial processes)."""
