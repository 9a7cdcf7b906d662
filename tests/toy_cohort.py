"""A tiny synthetic cohort built from real pipeline stores, shared by the training tests: feature stores written
with ``write_store``, a genomics store built by ``build_genomics_store`` from a small expression CSV and GMT
files, a report-embedding store with token states, and a planted survival signal (latent risk z sets the share
of 'tumour' tiles and gene G00). Some patients lack expression, reports or slides; a few have two slides."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pathmm_pipeline.cohort.dataset import MultimodalCohort
from pathmm_pipeline.core.provenance import build_provenance
from pathmm_pipeline.core.stores import ArraySpec, write_store
from pathmm_pipeline.genomics import GenomicsSettings, build_genomics_store

N_PATIENTS = 90
D_WSI = 16
N_GENES = 30
D_TEXT = 8
NO_EXPRESSION = ("P003", "P011", "P027", "P040", "P052")
NO_REPORT = ("P005", "P007", "P018", "P033", "P047")
NO_SLIDES = ("P007",)
TWO_SLIDES = ("P001", "P002", "P020")




@dataclass
class ToyCohort:
    root: Path
    manifest: pd.DataFrame
    features_dir: Path
    genomics: Path
    reports: Path
    expression_csv: Path
    gmts: tuple[Path, Path]
    risk: pd.Series

    def cohort(self, genomics: Path | None = None, **options) -> MultimodalCohort:
        options = {"pathway_collection": "pathways", "family_collection": "families", **options}
        return MultimodalCohort.from_manifest(self.manifest, self.features_dir, genomics or self.genomics,
                                              self.reports, **options)


def _feature_store(path: Path, slide_id: str, features: np.ndarray) -> None:
    n = len(features)
    coords = np.stack([np.arange(n) * 256, np.zeros(n)], axis=1).astype(np.int64)
    attrs = {"slide_id": slide_id, "status": "ok", "reason": "", "n_tiles": n,
             "encoder": {"name": "toy", "weights_sha256": "0" * 64, "embed_dim": D_WSI, "version": "toy"},
             "transform": {"tile_px": 256, "input_size": 224, "tile_mpp": 0.5}}
    write_store(path, {"features": ArraySpec(features.astype(np.float16), ("tile", "feature")),
                       "coords": ArraySpec(coords, ("tile", "xy")),
                       "tissue_fraction": ArraySpec(np.ones(n, np.float32), ("tile",))},
                attrs, build_provenance("features", {}, {"toy": True}))


def _write_gmt(path: Path, sets: dict[str, list[str]]) -> Path:
    path.write_text("".join(f"{name}\t\t" + "\t".join(genes) + "\n" for name, genes in sets.items()))
    return path


def expression_frame(risk: pd.Series, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = [p for p in risk.index if p not in NO_EXPRESSION]
    values = rng.normal(8.0, 1.0, (len(ids), N_GENES))
    values[:, 0] = 8.0 + 1.5 * risk.loc[ids].to_numpy() + rng.normal(0, 0.3, len(ids))
    values[3, 7] = np.nan  # one missing value, imputed with the training median
    return pd.DataFrame(values, index=pd.Index(ids, name="sample"), columns=[f"G{i:02d}" for i in range(N_GENES)])


def genomics_store(toy_root: Path, frame: pd.DataFrame, gmts: tuple[Path, Path], name: str) -> tuple[Path, Path]:
    csv = toy_root / f"{name}.csv"
    frame.to_csv(csv)
    store = build_genomics_store([csv], frame.index.tolist(), toy_root / f"{name}.zarr",
                                 GenomicsSettings(genesets=tuple(str(g) for g in gmts), orientation="samples_x_genes"))
    return store, csv


#: small model options the training and report tests share
ABMIL_SMALL = {"hidden_dim": 16, "attn_dim": 8, "dropout": 0.0}
FUSION_SMALL = {"dim": 16, "attn_dim": 8, "snn_hidden": (16, 16), "report_hidden": (16, 16), "dropout": 0.0}


#: the clinical table ModalTune's text targets read: OncoTree codes (PSTAD rare), and a stage that follows z
SUBTYPES = ("TSTAD", "DSTAD", "TSTAD", "MSTAD", "DSTAD", "TSTAD", "DSTAD", "PSTAD")
STAGES, STAGE_CUTS = ("I", "II", "III", "IV"), (-0.67, 0.0, 0.67)


def build_toy_cohort(root: Path, seed: int = 0, wsi_signal: str = "mean",
                     n_patients: int = N_PATIENTS, type_shift: float = 0.0) -> ToyCohort:
    """``n_patients`` (90) patients; survival driven by a latent risk z that also sets the fraction of 'tumour'
    tiles (feature 0 shifted by +3) and gene G00, and the clinical stage (I-IV by quartile of z; subtypes cycle
    through OncoTree codes). Some patients lack expression, reports or slides; a few have two slides. Another
    ``n_patients`` draws every patient anew (its first 90 are not the default cohort's, which is unchanged).
    ``type_shift``: the latent risk of cancer type B (every third patient) is shifted by it, so that the types
    differ in outcome and in every modality's typical value (a pan-cancer cohort); 0 (default): no difference."""
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n_patients)]
    z = pd.Series(rng.normal(0, 1, n_patients), index=ids)
    z.iloc[::3] += type_shift
    t_event = rng.exponential(1.0, n_patients) / (0.05 * np.exp(2.0 * z.to_numpy()))
    t_censor = rng.uniform(5, 90, n_patients)
    time = np.minimum(t_event, t_censor).round(3) + 0.01
    event = (t_event <= t_censor).astype(int)

    features_dir = root / "features"
    rows = []
    for i, p in enumerate(ids):
        frac = 1 / (1 + math.exp(-2.0 * z[p]))
        n_slides = 0 if p in NO_SLIDES else 2 if p in TWO_SLIDES else 1
        for s in range(n_slides):
            n = int(rng.integers(20, 40))
            feats = rng.normal(0, 1, (n, D_WSI))
            tumour = rng.random(n) < frac
            if wsi_signal == "mean":
                feats[tumour, :4] += 2.0
            else:  # "sign": tumour tiles shifted by +-2 at random, so the slide's mean feature carries no signal
                feats[tumour, :4] += 2.0 * rng.choice([-1.0, 1.0], (int(tumour.sum()), 1))
            _feature_store(features_dir / f"{p}-slide{s + 1}.zarr", f"{p}-slide{s + 1}", feats)
        for s in range(max(1, n_slides)):
            rows.append({"patient_id": p, "slide_id": f"{p}-slide{s + 1}", "cancer_type": "A" if i % 3 else "B",
                         "survival_time": float(time[i]), "survival_event": int(event[i]),
                         "grade": "high" if z[p] > 0 else "low", "subtype": SUBTYPES[i % len(SUBTYPES)],
                         "stage": STAGES[int(np.searchsorted(STAGE_CUTS, z[p]))]})
    manifest = pd.DataFrame(rows)

    genes = [f"G{i:02d}" for i in range(N_GENES)]
    gmts = (_write_gmt(root / "pathways.gmt", {"PW_A": genes[:5], "PW_B": genes[5:15], "PW_C": genes[15:]}),
            _write_gmt(root / "families.gmt", {"FAM_1": genes[:8], "FAM_2": genes[8:20], "FAM_3": genes[20:]}))
    genomics, csv = genomics_store(root, expression_frame(z), gmts, "expression")

    with_report = [p for p in ids if p not in NO_REPORT]
    emb = rng.normal(0, 1, (len(with_report), D_TEXT)).astype(np.float32)
    lengths = rng.integers(2, 6, len(with_report))
    hidden = rng.normal(0, 1, (len(with_report), 6, D_TEXT)).astype(np.float16)
    mask = (np.arange(6)[None, :] < lengths[:, None]).astype(np.int8)
    reports = write_store(root / "embeddings.zarr", {
        "patient_ids": ArraySpec(np.array(with_report, dtype=np.dtypes.StringDType()), ("patient",)),
        "embeddings": ArraySpec(emb, ("patient", "feature")),
        "hidden_states": ArraySpec(hidden, ("chunk", "token", "feature")),
        "attention_mask": ArraySpec(mask, ("chunk", "token")),
        "patient_chunk_offsets": ArraySpec(np.arange(len(with_report) + 1, dtype=np.int64), ("patient_edge",)),
    }, {"dim": D_TEXT, "n_patients": len(with_report), "keep_tokens": True},
        build_provenance("reports_embed", {}, {"toy": True}))
    return ToyCohort(root, manifest, features_dir, genomics, reports, csv, gmts, z)
