"""Floor 10: one function per Snakemake rule, named as the rule; the CLI calls these and nothing else."""
