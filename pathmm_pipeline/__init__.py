"""pathmm-pipeline: multimodal computational pathology, from slides to audited Zarr stores."""

__version__ = "0.1.0"
