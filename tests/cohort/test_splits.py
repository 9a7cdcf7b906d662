"""Patient-level splits: the published TCGA BLCA/STAD 5-fold files, the file format, the checks, making them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pathmm_pipeline.cohort.splits import Fold, SplitError, SplitSet, make_splits, read_splits, site_of, write_splits
from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.demo import tcga
from pathmm_pipeline.stats.conventions import event_from_censorship

# cohort -> (patients, (train, val) per fold) of the published splits
PUBLISHED = {
    "blca": (359, [(289, 70), (287, 72), (284, 75), (288, 71), (288, 71)]),
    "stad": (319, [(276, 43), (263, 56), (218, 101), (274, 45), (245, 74)]),
}


@pytest.mark.parametrize("cohort", sorted(PUBLISHED))
def test_published_splits_load_and_pass_the_patient_level_checks(cohort, tmp_path):
    clinical = tcga.load_clinical(cohort)
    splits = read_splits(tcga.splits_dir(cohort), known_patients=clinical.index)
    n, sizes = PUBLISHED[cohort]
    assert splits.k == 5 and len(splits.patients) == n and set(splits.patients) == set(clinical.index)
    assert [(len(f.train), len(f.val)) for f in splits] == sizes
    assert splits.problems() == []
    assert sorted(splits.val_fold()) == splits.patients  # every patient validated exactly once
    for fold in splits:  # the published folds keep each tissue-source site on one side
        assert not {site_of(p) for p in fold.train} & {site_of(p) for p in fold.val}
    # the same reader and writer: written again, the files are identical byte for byte
    write_splits(splits, tmp_path)
    for i in range(5):
        name = f"splits_{i}.csv"
        assert (tmp_path / name).read_bytes() == (tcga.splits_dir(cohort) / name).read_bytes()
    assert read_splits(tmp_path).folds == splits.folds


def test_unknown_patient_names_the_file_and_patient():
    expression = tcga.load_expression("stad")  # TCGA-CD-A487 is in the splits but has no expression
    with pytest.raises(SplitError) as err:
        read_splits(tcga.splits_dir("stad"), known_patients=expression.index)
    assert "splits_0.csv: patient 'TCGA-CD-A487' (val) is not among the 336 known patients" in str(err.value)
    restricted, dropped = read_splits(tcga.splits_dir("stad")).restrict(expression.index)
    assert dropped == ["TCGA-CD-A487"] and restricted.problems(expression.index) == []


def write_raw(folder: Path, folds: list[tuple[list[str], list[str]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (train, val) in enumerate(folds):
        pd.DataFrame({"train": pd.Series(train, dtype=object), "val": pd.Series(val, dtype=object)}).to_csv(
            folder / f"splits_{i}.csv")
    return folder


def test_checks_report_every_violation(tmp_path):
    folder = write_raw(tmp_path / "bad", [
        (["A", "B", "C", "E"], ["D", "C"]),  # C on both sides of fold 0
        (["A", "C", "D", "E"], ["B", "D"]),  # D on both sides; D validated twice
        (["B", "C", "D", "D", "E"], ["A"]),  # D twice in one column; E never validated
    ])
    with pytest.raises(SplitError) as err:
        read_splits(folder)
    text = str(err.value)
    assert "splits_0.csv: patient 'C' is in both train and val" in text
    assert "splits_1.csv: patient 'D' is in both train and val" in text
    assert "splits_2.csv: patient 'D' appears twice in the train column" in text
    assert "patient 'D' is in the validation column of several folds" in text
    assert "patient 'E' is in no validation fold" in text


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_splits(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no splits_"):
        read_splits(tmp_path / "empty")
    gap = write_raw(tmp_path / "gap", [(["A"], ["B"]), (["B"], ["A"])])
    (gap / "splits_1.csv").rename(gap / "splits_2.csv")
    with pytest.raises(InputError, match=r"missing for fold\(s\) \[1\]"):
        read_splits(gap)
    header = tmp_path / "header"
    header.mkdir()
    (header / "splits_0.csv").write_text(",training,validation\n0,A,B\n")
    with pytest.raises(InputError, match="expected the columns"):
        read_splits(header)


def test_fold_that_forgets_a_patient(tmp_path):
    folder = write_raw(tmp_path / "s", [(["A", "B"], ["C"]), (["C"], ["A", "B"]), (["A", "B", "C"], ["E"])])
    with pytest.raises(SplitError, match="splits_0.csv: patient 'E' \\(in another fold\\) is in neither"):
        read_splits(folder)


def patients_frame(cohort: str = "blca") -> pd.DataFrame:
    clinical = tcga.load_clinical(cohort)
    frame = pd.DataFrame({"event": event_from_censorship(clinical["censorship_dss"])}, index=clinical.index)
    frame["label"] = pd.qcut(clinical["survival_months_dss"], 4, labels=False).to_numpy()
    return frame


def test_make_stratified_splits(tmp_path):
    frame = patients_frame()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "least populated class" warning: rare strata are merged
        splits = make_splits(frame, k=5, stratify=("event", "label"), seed=3)
    assert splits.problems(frame.index) == [] and splits.method == "stratified:event+label"
    events = [frame.loc[list(f.val), "event"].sum() for f in splits]
    assert max(events) - min(events) <= 2  # events spread evenly over the folds
    assert splits.folds == make_splits(frame, k=5, stratify=("event", "label"), seed=3).folds
    assert splits.folds != make_splits(frame, k=5, stratify=("event", "label"), seed=4).folds
    write_splits(splits, tmp_path)
    again = read_splits(tmp_path, known_patients=frame.index)
    assert again.folds == splits.folds and again.method == splits.method and again.seed == 3
    with pytest.raises(InputError, match="already holds 5 split file"):
        write_splits(splits, tmp_path)
    write_splits(make_splits(frame, k=3, stratify=None, seed=0), tmp_path, overwrite=True)
    assert read_splits(tmp_path).k == 3 and not (tmp_path / "splits_4.csv").exists()


def test_rare_strata_are_merged():
    frame = pd.DataFrame({"event": [1] * 2 + [0] * 18, "label": [9] * 2 + [0, 1] * 9},
                         index=[f"P{i:02d}" for i in range(20)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits = make_splits(frame, k=5, stratify=("event", "label"), seed=0)
    assert splits.problems() == []
    # "1|9" (2 patients) -> "1" (2) -> "rare" (2), still < k -> merged into the largest stratum
    assert sorted(splits.meta["strata"].values()) == [9, 11] and min(splits.meta["strata"].values()) >= 5


def test_make_site_splits():
    frame = patients_frame("stad")
    splits = make_splits(frame, k=5, stratify="site", seed=0)
    assert splits.problems(frame.index) == [] and splits.method == "site"
    for fold in splits:
        assert not {site_of(p) for p in fold.train} & {site_of(p) for p in fold.val}
    assert site_of("TCGA-2F-A9KO") == "2F"
    with pytest.raises(ValueError, match="not a TCGA barcode"):
        site_of("patient-1")
    few = pd.DataFrame({"event": [1, 0, 1]}, index=["TCGA-AA-0001", "TCGA-AA-0002", "TCGA-BB-0003"])
    with pytest.raises(ValueError, match="2 sites cannot fill 3 folds"):
        make_splits(few, k=3, stratify="site")


def test_split_set_rejects_bad_ids():
    bad = SplitSet((Fold(0, ("A,B",), ("C",)), Fold(1, ("C",), ("A,B",))))
    assert any("bad patient id" in p for p in bad.problems())
    with pytest.raises(ValueError, match="duplicated"):
        make_splits(pd.DataFrame({"event": [1, 1]}, index=["A", "A"]), k=2, stratify=None)
    assert np.array_equal(sorted(SplitSet((Fold(0, ("B",), ("A",)),)).patients), ["A", "B"])
