"""features.import / features.export in the DAG (a dry run on zero-byte placeholder slides): an imported feature
folder is planned through import_features, never extraction, and every extracted store gets its export job."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from conftest import REPO, snakemake


def test_imported_folders_are_imported_and_extracted_ones_exported(tmp_path: Path):
    (tmp_path / "slides").mkdir()
    (tmp_path / "trident").mkdir()
    rows = ["patient_id,slide_id,slide_path,mpp,cancer_type,survival_time,survival_event"]
    for i in range(2):
        (tmp_path / "slides" / f"S{i}.svs").touch()
        (tmp_path / "trident" / f"S{i}.h5").touch()
        rows.append(f"P{i},S{i},slides/S{i}.svs,0.5,BLCA,{10 + i},{i}")
    (tmp_path / "samplesheet.csv").write_text("\n".join(rows) + "\n")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(tmp_path / "samplesheet.csv"), results="results")
    config["training"].update(models=[], compare_encoders={})
    config["features"].update({"import": {"uni_trident": "trident"}, "export": ["trident", "clam"]})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    text = snakemake(tmp_path, "--dry-run", "--printshellcmds").stdout
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", text.split("Job stats:")[1], re.M))
    assert jobs["import_features"] == "2" and jobs["extract_features"] == "2" and jobs["export_features"] == "2"
    assert "results/features/uni_trident/S0.zarr" in text and "trident/S0.h5" in text
    commands = [line for line in text.splitlines() if line.startswith("Shell command: ")]
    assert all("uni_trident" not in c for c in commands if "pathmm extract-features" in c)
    assert sum("pathmm import-features trident/S" in c for c in commands) == 2
    assert "results/export/trident/features_efficientnet_lite0/S1.h5" in text
    assert "results/export/clam/efficientnet_lite0/pt_files/S1.pt" in text
    assert "export/trident/features_uni_trident" not in text
