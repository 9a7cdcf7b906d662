"""Config and sample sheet validation: every bad input named by row and column, before any job runs."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from conftest import REPO

from pathmm_pipeline.cli import main
from pathmm_pipeline.core.config import load_config, validate_config
from pathmm_pipeline.core.errors import ConfigError, SampleSheetError
from pathmm_pipeline.core.provenance import read_provenance
from pathmm_pipeline.preprocess.samplesheet import load_samplesheet, slide_entries, write_manifest

COLUMNS = ["patient_id", "slide_id", "slide_path", "mpp", "cancer_type", "survival_time", "survival_event",
           "subtype", "report_path"]


@pytest.fixture
def cohort(tmp_path):
    (tmp_path / "slides").mkdir()
    (tmp_path / "reports").mkdir()
    rows = []
    for i, (patient, cancer) in enumerate([("P1", "BLCA"), ("P1", "BLCA"), ("P2", "STAD")]):
        (tmp_path / "slides" / f"s{i}.svs").write_bytes(b"x")
        (tmp_path / "reports" / f"{patient}.txt").write_text("report")
        rows.append({"patient_id": patient, "slide_id": f"s{i}", "slide_path": f"slides/s{i}.svs", "mpp": "",
                     "cancer_type": cancer, "survival_time": "12.5" if patient == "P1" else "3",
                     "survival_event": "1", "subtype": "", "report_path": f"reports/{patient}.txt"})
    return tmp_path, rows


def write(tmp_path, rows, name="sheet.csv", columns=None):
    path = tmp_path / name
    pd.DataFrame(rows, columns=columns or list(rows[0])).to_csv(path, index=False)
    return path


def test_valid_sheet_resolves_paths(cohort):
    root, rows = cohort
    frame = load_samplesheet(write(root, rows), ["BLCA", "STAD"])
    assert list(frame.slide_id) == ["s0", "s1", "s2"]
    assert frame.slide_path[0] == str(root / "slides" / "s0.svs")
    entries = slide_entries(frame)
    assert entries["s2"].cancer_type == "STAD" and entries["s2"].mpp is None


def test_parquet_sheet_is_accepted(cohort):
    root, rows = cohort
    path = root / "sheet.parquet"
    frame = pd.DataFrame(rows)
    frame["survival_time"] = frame.survival_time.astype(float)
    frame["survival_event"] = frame.survival_event.astype(int)
    frame["mpp"] = [None, 0.25, None]
    frame.to_parquet(path)
    loaded = load_samplesheet(path, ["BLCA", "STAD"])
    assert slide_entries(loaded)["s1"].mpp == 0.25


@pytest.mark.parametrize("mutate, expected", [
    (lambda rows: rows[1].update(slide_id="s0"), "duplicate slide_id 's0' in row 1 (line 2), row 2 (line 3)"),
    (lambda rows: rows[2].update(slide_path="slides/gone.svs"),
     "row 3 (line 4): slide_path 'slides/gone.svs' does not exist"),
    (lambda rows: [r.update(survival_time="-4") for r in rows[:2]],
     "row 1 (line 2): column 'survival_time' must be >= 0, got -4.0"),
    (lambda rows: rows[2].update(cancer_type="LUAD"), "row 3 (line 4): unknown cancer_type 'LUAD'"),
    (lambda rows: rows[0].update(survival_event="2"),
     "row 1 (line 2): column 'survival_event' must be one of 0, 1 or empty, got 2"),
    (lambda rows: rows[0].update(mpp="abc"), "row 1 (line 2): column 'mpp' must be a number, got 'abc'"),
    (lambda rows: rows[1].update(cancer_type="STAD"), "patient 'P1': slides disagree on 'cancer_type'"),
    (lambda rows: rows[0].update(slide_id="bad id/1"), "may only use letters, digits"),
    (lambda rows: rows[2].update(survival_event=""), "survival_time and survival_event must both be given"),
])
def test_each_bad_row_is_named(cohort, mutate, expected):
    root, rows = cohort
    mutate(rows)
    with pytest.raises(SampleSheetError) as err:
        load_samplesheet(write(root, rows), ["BLCA", "STAD"])
    assert expected in str(err.value)
    assert "sheet.csv" in str(err.value)


def test_wrong_and_missing_columns(cohort):
    root, rows = cohort
    for r in rows:
        r["survival_tme"] = r.pop("survival_time")
        del r["cancer_type"]
    with pytest.raises(SampleSheetError) as err:
        load_samplesheet(write(root, rows), ["BLCA"])
    message = str(err.value)
    assert "unknown column 'survival_tme' (did you mean 'survival_time'?)" in message
    assert "missing required column 'cancer_type'" in message


def test_extra_label_columns_must_be_declared(cohort):
    root, rows = cohort
    for r in rows:
        r["msi_status"] = "MSS"
    with pytest.raises(SampleSheetError, match="unknown column 'msi_status'"):
        load_samplesheet(write(root, rows), ["BLCA", "STAD"])
    assert "msi_status" in load_samplesheet(write(root, rows), ["BLCA", "STAD"], extra_labels=["msi_status"])


def test_all_problems_reported_together(cohort):
    root, rows = cohort
    rows[1]["slide_id"] = "s0"
    rows[2]["cancer_type"] = "LUAD"
    with pytest.raises(SampleSheetError) as err:
        load_samplesheet(write(root, rows), ["BLCA", "STAD"])
    assert len(err.value.problems) == 2


def test_manifest_carries_provenance(cohort, tmp_path):
    root, rows = cohort
    sheet = write(root, rows)
    out = write_manifest(sheet, tmp_path / "out" / "manifest.parquet", ["BLCA", "STAD"])
    assert len(pd.read_parquet(out)) == 3
    record = read_provenance(out)
    assert record["stage"] == "manifest" and record["inputs"]["samplesheet"]["path"] == str(sheet.resolve())


def test_repository_config_is_valid_and_defaults_fill_in(tmp_path):
    config = load_config(REPO / "config.yaml")
    assert config["tiling"]["mpp"] == 0.5 and config["slide"]["backend"] == "openslide"
    minimal = validate_config({"samplesheet": "s.csv", "cancer_types": ["BLCA"]})
    assert minimal["segmentation"]["mpp"] == 8.0 and minimal["tiling"]["tile_px"] == 256
    assert minimal["results"] == "results"


@pytest.mark.parametrize("patch, expected", [
    ({"tiling": {"mpp": -1}}, "tiling.mpp"),
    ({"tiling": {"tile_sz": 3}}, "'tile_sz' was unexpected"),
    ({"slide": {"backend": "bioformats"}}, "slide.backend"),
    ({"segmentation": {"threshold": "triangle"}}, "segmentation.threshold"),
])
def test_bad_config_names_the_key(tmp_path, patch, expected):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for section, values in patch.items():
        config[section].update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert expected in str(err.value) and str(path) in str(err.value)


def test_validate_command(cohort, tmp_path, capsys):
    root, rows = cohort
    sheet = write(root, rows)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"samplesheet": str(sheet), "cancer_types": ["BLCA", "STAD"]}))
    assert main(["validate", "--config", str(config)]) == 0
    assert "3 slide(s) of 2 patient(s)" in capsys.readouterr().out
    rows[0]["survival_time"] = "-1"
    write(root, rows)
    assert main(["validate", "--config", str(config)]) == 2
    assert "must be >= 0" in capsys.readouterr().err


# ------------------------------------------------------------------------------ patients without slides
def test_a_patient_without_slides_is_one_row_with_empty_slide_columns(cohort):
    tmp_path, rows = cohort
    (tmp_path / "reports" / "P3.txt").write_text("report")
    rows.append({**rows[-1], "patient_id": "P3", "slide_id": "", "slide_path": "", "report_path": "reports/P3.txt"})
    frame = load_samplesheet(write(tmp_path, rows), ["BLCA", "STAD"])
    assert len(frame) == 4 and pd.isna(frame.loc[3, "slide_id"]) and pd.isna(frame.loc[3, "slide_path"])
    assert set(slide_entries(frame)) == {"s0", "s1", "s2"}  # no slide entry for P3
    manifest = write_manifest(write(tmp_path, rows, "again.csv"), tmp_path / "m.parquet", ["BLCA", "STAD"])
    assert set(pd.read_parquet(manifest).patient_id) == {"P1", "P2", "P3"}


def test_a_cohort_without_any_slide_may_leave_the_slide_columns_out(tmp_path):
    (tmp_path / "e.tsv").write_text("sample\tP1-01\nTP53\t1.0\n")
    rows = [{"patient_id": "P1", "cancer_type": "BLCA", "expression_path": "e.tsv"}]
    frame = load_samplesheet(write(tmp_path, rows), ["BLCA"])
    assert slide_entries(frame) == {}


@pytest.mark.parametrize("change, expected", [
    ({"slide_id": "s9", "slide_path": ""}, "slide_id and slide_path must both be given"),
    ({"slide_id": "", "report_path": ""}, "have no slide, no expression_path and no report_path"),
    ({"patient_id": "P1", "slide_id": "", "slide_path": ""}, "has slides and a row without a slide"),
])
def test_bad_slide_less_rows_are_named(cohort, change, expected):
    tmp_path, rows = cohort
    rows.append({**rows[-1], "patient_id": "P3", "slide_id": "", "slide_path": "", **change})
    with pytest.raises(SampleSheetError) as info:
        load_samplesheet(write(tmp_path, rows), ["BLCA", "STAD"])
    message = str(info.value)
    assert expected in message and "sheet.csv" in message
    if "no report_path" in expected:
        assert "P3" in message


def test_a_model_that_needs_a_modality_no_patient_has_is_refused_before_any_job():
    from pathmm_pipeline.core.errors import InputError
    from pathmm_pipeline.plan.runs import check_runs_against_cohort, resolve_runs

    runs = resolve_runs(["snn", "alter", "mcat", "abmil"])
    with pytest.raises(InputError) as info:
        check_runs_against_cohort(runs, {"genomics"}, {"wsi": 0, "genomics": 40, "report": 0})
    message = str(info.value)
    assert "'abmil'" in message and "'mcat'" in message and "'snn'" not in message and "'alter'" not in message
    assert "wsi: 0 patients" in message
    check_runs_against_cohort(resolve_runs(["snn", "alter", "ridge_cox"]), {"genomics"})  # these can learn


# ------------------------------------------------------------------------------ per-run settings
def test_variant_settings_are_checked_naming_the_key_and_the_variant():
    from pathmm_pipeline.core.errors import InputError
    from pathmm_pipeline.plan.runs import resolve_runs

    good = {"fast": {"model": "abmil", "settings": {"epochs": 3, "optimizer": "radam", "max_tiles": 64},
                     "pretrain_settings": {}}}
    assert resolve_runs(["fast"], good)["fast"].settings == {"epochs": 3, "optimizer": "radam", "max_tiles": 64}
    for settings, words in (({"epoch": 3}, ("training.variants.fast.settings", "epoch")),
                            ({"selection": "inner"}, ("selection", "shared by every run")),
                            ({"optimizer": "sgd"}, ("training.variants.fast.settings", "optimizer"))):
        with pytest.raises(InputError) as info:
            resolve_runs(["fast"], {"fast": {"model": "abmil", "settings": settings}})
        assert all(w in str(info.value) for w in words), str(info.value)
    with pytest.raises(InputError, match="pretrain_settings.*warmup"):
        resolve_runs(["m"], {"m": {"model": "mice", "pretrain_settings": {"warmup": 1}}})


def test_the_published_presets_of_config_yaml_resolve_and_cite_their_source():
    from pathmm_pipeline.plan.runs import resolve_runs

    config = load_config(REPO / "config.yaml")
    variants = config["training"]["variants"]
    presets = {k: v for k, v in variants.items() if k.endswith("_published") or k.endswith("_protocol")}
    assert {"survpath_published", "modaltune_published", "abmil_survpath_protocol"} <= set(presets)
    runs = resolve_runs(list(presets), variants)
    assert runs["survpath_published"].settings["optimizer"] == "radam"
    assert runs["survpath_published"].settings["alpha_surv"] == 0.5 and runs["survpath_published"].settings[
        "weighted_sampling"]
    # ModalTune's schedule is its tuning (the pretraining stage); its probe is fitted, not trained
    assert runs["modaltune_published"].pretrain_settings == {"lr": 0.0001, "weight_decay": 0.0005, "epochs": 30,
                                                             "warmup_epochs": 10, "batch_size": 2}
    assert "protocol" not in runs["modaltune_published"].options  # the class default: the published probe
    assert all(v.get("source") for v in presets.values())
    with pytest.raises(ConfigError):  # the protocol is one for all runs: not in the shared settings either
        validate_config({**config, "training": {**config["training"], "settings": {"selection": "inner"}}})
