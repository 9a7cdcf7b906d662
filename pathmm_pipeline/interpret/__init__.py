"""Floor 9 (beside ``downstream``): what a trained model looks at on a slide. Per-tile attention from the
model's own pooling weights (:mod:`.attention`, one registered extractor per model family), a model-agnostic
per-tile contribution to the prediction (:mod:`.contribution`), and the heatmap outputs drawn from them over
the QC thumbnail, as QuPath GeoJSON and as top / bottom tile crops (:mod:`.render`, :mod:`.heatmap`)."""
