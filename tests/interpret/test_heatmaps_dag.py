"""The heatmap rule in the DAG (Snakemake's own dry run on a placeholder cohort): one job per run that weighs tiles
and per configured fold, none for a run that does not read the slide, its folders are inputs of the evaluation
report, and a bad ``heatmaps`` section stops the DAG at parse naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO, snakemake

from pathmm_pipeline.interpret.settings import HeatmapSettings
from pathmm_pipeline.plan.heatmaps import DAG_KEYS, WEIGHS_TILES


def cohort(root: Path, heatmaps: dict) -> Path:
    """8 zero-byte slides of 8 patients with (zero-byte) expression: enough to plan the DAG, never to run it."""
    (root / "slides").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    rows = ["patient_id,slide_id,slide_path,mpp,cancer_type,survival_time,survival_event,expression_path"]
    for i in range(8):
        (root / "slides" / f"S{i}.svs").touch()
        (root / "data" / f"P{i}.tsv").touch()
        rows.append(f"P{i},S{i},slides/S{i}.svs,0.5,BLCA,{10 + i},{i % 2},data/P{i}.tsv")
    (root / "samplesheet.csv").write_text("\n".join(rows) + "\n")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(root / "samplesheet.csv"), results="results")
    config["training"].update(models=["abmil", "snn"], compare_encoders={}, folds=3)
    config["heatmaps"] = {**config["heatmaps"], **heatmaps}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def jobs(root: Path) -> tuple[dict[str, list[str]], str]:
    proc = snakemake(root, "--dry-run", "--printshellcmds", check=False)
    text = proc.stdout + proc.stderr
    commands: dict[str, list[str]] = {}
    rule = None
    for line in text.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):", line):
            rule = match.group(1)
        elif line.startswith("Shell command: ") and rule is not None:
            commands.setdefault(rule, []).append(line[len("Shell command: "):])
    return commands, text


def test_one_job_per_run_that_weighs_tiles_and_fold_and_the_report_waits_for_them(tmp_path):
    commands, text = jobs(cohort(tmp_path, {"folds": [0, 2]}))
    heat = sorted(commands.get("heatmaps", []))
    assert len(heat) == 2, text[-3000:]
    assert all("--checkpoint results/training/efficientnet_lite0/abmil/survival/fold_" in c for c in heat)
    outs = sorted(re.search(r"--out (\S+)", c).group(1) for c in heat)
    assert outs == [f"results/heatmaps/efficientnet_lite0/abmil/survival/fold_{k}" for k in (0, 2)]
    assert not any("/snn/" in c for c in heat)  # SNN reads no slide
    (evaluate,) = commands["evaluate"]
    assert all(o in evaluate for o in outs) and "--heatmaps" in evaluate


def test_disabled_plans_no_heatmap_and_the_report_builds_without(tmp_path):
    commands, _ = jobs(cohort(tmp_path, {"enabled": False}))
    assert "heatmaps" not in commands and "--heatmaps" not in commands["evaluate"][0]


@pytest.mark.parametrize("bad, message", [({"runs": ["snn"]}, "does not read the slide"),
                                          ({"runs": ["nonsense"]}, "not a trained run"),
                                          ({"folds": [7]}, "fold 7"),
                                          ({"top_k_tiles": -1}, "top_k_tiles")])
def test_a_bad_section_stops_the_dag_at_parse(tmp_path, bad, message):
    _, text = jobs(cohort(tmp_path, bad))
    assert message in text and "heatmaps" in text


def test_schema_and_settings_share_their_defaults():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    section = schema["properties"]["heatmaps"]
    assert section["additionalProperties"] is False
    defaults = HeatmapSettings().to_dict()
    job_only = {"backend"}  # from slide.backend
    assert set(section["properties"]) - set(DAG_KEYS) == set(defaults) - job_only
    for key in set(section["properties"]) & set(defaults):
        assert section["properties"][key]["default"] == defaults[key], key
    assert {"abmil", "transmil", "mcat", "survpath", "alter", "mice", "umeml", "mstar"} <= WEIGHS_TILES
    assert "snn" not in WEIGHS_TILES
