"""Floor 5: what the Snakemake rules import and nothing else -- the runs of the training DAG, their settings JSON,
inputs and memory. Torch-free, so parsing the Snakefile imports no deep-learning library."""
