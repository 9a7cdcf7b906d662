"""No command line grows with the cohort: Linux refuses one argument over 128 KiB and a command over 2 MiB, so the
cohort-wide jobs (qc_summary, genomics, merge_reports) get their lists through content-addressed files.

Snakemake's own dry-run prints every job's shell command; two generated cohorts (zero-byte placeholder slides,
per-patient expression and report files) of 12 and 72 slides must give commands of the same length rule by
rule. The list files must hold exactly the cohort, and a changed list must re-run the rule that reads it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO, snakemake


def make_cohort(root: Path, n_slides: int) -> Path:
    """``n_slides`` slides, two per patient, each patient with its own expression and report file."""
    (root / "slides").mkdir(parents=True)
    (root / "data").mkdir()
    rows = ["patient_id,slide_id,slide_path,mpp,cancer_type,survival_time,survival_event,expression_path,"
            "report_path"]
    for i in range(n_slides):
        patient, slide = f"P{i // 2:06d}", f"S{i:06d}"
        (root / "slides" / f"{slide}.svs").touch()
        (root / "data" / f"{patient}.tsv").touch()
        (root / "data" / f"{patient}.txt").touch()
        rows.append(f"{patient},{slide},slides/{slide}.svs,0.5,BLCA,{10 + (i // 2) % 7},{(i // 2) % 2},"
                    f"data/{patient}.tsv,data/{patient}.txt")
    (root / "samplesheet.csv").write_text("\n".join(rows) + "\n")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(root / "samplesheet.csv"), results="results")
    config["training"]["models"] = []
    config["training"]["compare_encoders"] = {}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def shell_commands(root: Path) -> dict[str, list[str]]:
    """Rule -> the shell commands of its planned jobs, from ``snakemake --dry-run --printshellcmds``."""
    text = snakemake(root, "--dry-run", "--printshellcmds").stdout
    commands: dict[str, list[str]] = {}
    rule = None
    for line in text.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):", line):
            rule = match.group(1)
        elif line.startswith("Shell command: ") and rule is not None:
            commands.setdefault(rule, []).append(line[len("Shell command: "):])
    return commands


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    return {n: (make_cohort(tmp_path_factory.mktemp(f"c{n}"), n)) for n in (12, 72)}


def test_no_command_line_grows_with_the_cohort(cohorts):
    small, large = (shell_commands(cohorts[n]) for n in (12, 72))
    assert {"qc_summary", "genomics", "merge_reports", "segment_tissue"} <= set(large)
    assert set(small) == set(large)
    for rule in large:
        longest_small = max(len(c) for c in small[rule])
        longest_large = max(len(c) for c in large[rule])
        assert longest_large == longest_small, (rule, longest_small, longest_large, max(large[rule], key=len))
    assert max(len(c) for cs in large.values() for c in cs) < 4096


def test_list_files_hold_the_cohort_and_a_new_patient_reruns_the_reader(cohorts):
    root = cohorts[12]
    command = shell_commands(root)["genomics"][0]
    listed = {flag: (root / path).read_text().splitlines()
              for flag, path in re.findall(r"--(expression|patients) @(\S+)", command)}
    assert listed["patients"] == [f"P{i:06d}" for i in range(6)]
    assert listed["expression"] == [str(root / "data" / f"P{i:06d}.tsv") for i in range(6)]
    tables = re.search(r"merge-reports @(\S+)", shell_commands(root)["merge_reports"][0]).group(1)
    assert (root / tables).read_text().splitlines() == [f"results/reports/clean/P{i:06d}.parquet" for i in range(6)]
    # one more patient: another list file (its name is its digest), so the params trigger re-runs genomics
    sheet = root / "samplesheet.csv"
    original = sheet.read_text()
    (root / "data" / "P999999.tsv").touch()
    sheet.write_text(original + "P999999,S999999,slides/S000000.svs,0.5,BLCA,3,1,data/P999999.tsv,\n")
    try:
        again = shell_commands(root)["genomics"][0]
    finally:
        sheet.write_text(original)
    assert again != command and len(again) == len(command)
    patients = re.search(r"--patients @(\S+)", again).group(1)
    assert (root / patients).read_text().splitlines()[-1] == "P999999"
