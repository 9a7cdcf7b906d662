"""Floor 7: predicting with a trained fold, evaluating it on its held-out patients, and the HTML report."""
