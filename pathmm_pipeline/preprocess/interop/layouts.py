"""The export layouts, by name: where each file of a slide goes under the export folder, and which peer code
reads it. Torch- and h5py-free, so the rules, the schema test and the CLI can list them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pathmm_pipeline.core.registry import Registry


@dataclass(frozen=True)
class Layout:
    """One peer tool's file layout: ``files`` are paths under the export folder with ``{encoder}`` and
    ``{slide}`` to fill; ``reader`` names the peer file that reads them (what the tests check against)."""

    name: str
    files: tuple[str, ...]
    reader: str

    def paths(self, root: str | Path, encoder: str, slide: str) -> list[Path]:
        """The files of one slide and encoder under ``root``."""
        return [Path(root) / f.format(encoder=encoder, slide=slide) for f in self.files]


LAYOUTS: Registry[Layout] = Registry("export layout", hint="; set features.export in config.yaml to some of these")

LAYOUTS.register("trident", Layout(
    "trident", ("trident/features_{encoder}/{slide}.h5",),
    "mahmoodlab/TRIDENT trident/IO.py (coords_to_h5, save_h5), trident/wsi_objects/WSI.py (extract_features, "
    "extract_slide_features)"))
LAYOUTS.register("clam", Layout(
    "clam", ("clam/{encoder}/h5_files/{slide}.h5", "clam/{encoder}/pt_files/{slide}.pt"),
    "mahmoodlab/CLAM extract_features_fp.py, wsi_core/WholeSlideImage.py (process_contour attrs), "
    "dataset_modules/dataset_generic.py (Generic_MIL_Dataset.__getitem__), dataset_modules/dataset_h5.py"))
LAYOUTS.register("stamp", Layout(
    "stamp", ("stamp/{encoder}/{slide}.h5",),
    "KatherLab/STAMP src/stamp/preprocessing/__init__.py (extract_), src/stamp/modeling/data.py (get_coords)"))


def export_paths(root: str | Path, formats: list[str], encoder: str, slide: str) -> list[Path]:
    """Every file the ``formats`` write for one slide and encoder (an unknown format fails naming the known)."""
    return [p for name in formats for p in LAYOUTS.get(name).paths(root, encoder, slide)]


def export_patterns(root: str, formats: list[str]) -> list[str]:
    """The files of ``formats`` as Snakemake output patterns (``{encoder}`` and ``{slide}`` left as wildcards)."""
    return [f"{root}/{f}" for name in formats for f in LAYOUTS.get(name).files]
