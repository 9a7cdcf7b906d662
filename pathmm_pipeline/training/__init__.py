"""Floor 8: the one training engine and what runs on it -- fine-tuning, pretraining and mSTAR's self-teaching."""
