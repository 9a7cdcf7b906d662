"""Floor 9: the downstream evaluations of a trained run, one registered function each: report generation, data
efficiency, linear / Cox probes and zero-/few-shot classification."""
