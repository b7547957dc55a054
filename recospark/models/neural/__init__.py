"""The tutorials' neural recommenders (placeholder until the engine branch `neural` is merged)."""
