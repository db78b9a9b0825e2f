"""The toy world: a generated dataset on which a tiny LLaVA really hallucinates (see world.py, files.py, base_model.py)."""
