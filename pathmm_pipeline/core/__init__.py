"""Floor 1, the ground: atomic writes, errors, the settings mixin, provenance, stores, config loading, the audit,
the runtime (device, determinism, peak memory) and the one generic registry. Imports nothing else of pathmm."""
