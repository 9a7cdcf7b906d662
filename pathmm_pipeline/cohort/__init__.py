"""Floor 5: the multimodal patient dataset (feature bags, expression, report embeddings), the patient-level
k-fold splits and the inner-validation splits carved from each fold's training patients."""
