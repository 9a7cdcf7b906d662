"""Floor 3: the slide stages -- reading slides, the sample sheet, tissue segmentation and QC, tiling at exact mpp
and patch-feature extraction."""
