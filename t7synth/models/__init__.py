"""LightningModules, one per model name (see ``t7synth.registry``); nets live in ``t7synth.nets``."""
