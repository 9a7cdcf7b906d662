"""Floor 1: statistics that read predictions and train nothing -- sign conventions, survival and classification
metrics, Kaplan-Meier curves and text metrics (numpy, pandas, lifelines, scikit-learn only)."""
