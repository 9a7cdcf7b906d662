"""The genomics stage on the real TCGA BLCA and STAD expression shipped with the package (Xena log2 values,
the published SurvPath pathway tables and 5-fold splits): counts, leakage, formats, and every bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pathmm_pipeline.core.errors import InputError
from pathmm_pipeline.core.provenance import read_provenance, verify_provenance
from pathmm_pipeline.demo import tcga
from pathmm_pipeline.genomics import (
    GeneScaler,
    GenomicsSettings,
    build_genomics_store,
    family_vectors,
    load_collection,
    load_genomics,
    mean_pathway_scores,
    pathway_gene_vectors,
    rank_scores,
    read_expression,
    read_gmt,
)
from pathmm_pipeline.genomics.genesets import builtin_collection, filter_collection
from pathmm_pipeline.genomics.io import patient_of, sample_type

N_GENES = 1577
# cohort -> (sample-sheet patients, matched, missing, expression patients not in the sheet)
PATIENTS = {"blca": (359, 359, 0, 1), "stad": (319, 318, 1, 18)}
# collection -> (sets, kept, dropped, genes in the collection, genes measured), default min_genes_per_set = 1
COLLECTIONS = {"survpath": (331, 331, 0, 4999, 1577), "mcat_families": (6, 6, 0, 3047, 269),
               "hallmarks": (50, 50, 0, 4241, 819)}
# with min_genes_per_set = 5: (kept, dropped)
COLLECTIONS_MIN5 = {"survpath": (216, 115), "mcat_families": (6, 0), "hallmarks": (47, 3)}


def expression_file(cohort: str) -> Path:
    return tcga.DATA_DIR / f"{cohort}_expression.parquet"


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("genomics")
    return {c: build_genomics_store([expression_file(c)], tcga.load_clinical(c).index.tolist(), root / f"{c}.zarr")
            for c in ("blca", "stad")}


@pytest.fixture(scope="module")
def blca() -> pd.DataFrame:
    """BLCA expression as float64, patients x genes."""
    return tcga.load_expression("blca").astype(np.float64)


@pytest.fixture
def small(blca: pd.DataFrame) -> pd.DataFrame:
    """12 real patients x 40 real genes (a hallmark-rich slice), for format and bad-input tests."""
    return blca.iloc[:12, :40].copy()


def write(frame: pd.DataFrame, path: Path, genes_as_rows: bool = False) -> Path:
    """Write ``frame`` (samples x genes) as CSV/TSV/Parquet by suffix, transposed when ``genes_as_rows``."""
    out = frame.T if genes_as_rows else frame
    out = out.rename_axis("gene" if genes_as_rows else "sample")
    if path.suffix == ".parquet":
        out.to_parquet(path)
    else:
        out.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    return path


# --- the real cohorts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("cohort", ["blca", "stad"])
def test_real_cohort_store_counts(stores, cohort):
    data = load_genomics(stores[cohort])
    counts = data.attrs["counts"]
    requested, matched, missing, extra = PATIENTS[cohort]
    assert (counts["patients_requested"], counts["patients_matched"], counts["patients_missing"],
            counts["patients_not_in_samplesheet"]) == (requested, matched, missing, extra)
    assert counts["genes_read"] == counts["genes"] == N_GENES and counts["genes_dropped_missing"] == 0
    assert data.expression.shape == (matched, N_GENES) and len(data.patients) == matched
    assert data.patients == [p for p in tcga.load_clinical(cohort).index if p in set(data.patients)]
    for name, (n_sets, kept, dropped, in_collection, measured) in COLLECTIONS.items():
        c = counts["collections"][name]
        assert (c["n_defined"], c["n_kept"], c["n_dropped"], c["genes_in_collection"], c["genes_matched"]) == \
            (n_sets, kept, dropped, in_collection, measured), name
        stored = data.collections[name]
        assert len(stored.set_names) == len(stored.indices) == kept
        assert stored.rank_scores.shape == (matched, kept)
        assert np.all(np.abs(stored.rank_scores) <= 0.5)
    # unscaled log2 values, identical to the committed table
    reference = tcga.load_expression(cohort).loc[data.patients, data.genes].to_numpy(np.float64)
    np.testing.assert_array_equal(data.expression, reference)
    assert data.attrs["files"][0]["scale"]["detected"] == "log2"
    assert data.attrs["files"][0]["orientation"] == "samples_x_genes"
    assert verify_provenance(stores[cohort]) == []
    record = read_provenance(stores[cohort])
    assert record["stage"] == "genomics" and record["params"]["genesets"] == list(COLLECTIONS)
    assert {"expression_0", "genesets_survpath_0", "genesets_survpath_1", "genesets_hallmarks_0",
            "genesets_mcat_families_0"} <= set(record["inputs"])


def test_stad_missing_patient_recorded(stores):
    data = load_genomics(stores["stad"])
    assert data.attrs["patients_missing"] == ["TCGA-CD-A487"]
    with pytest.raises(KeyError, match="TCGA-CD-A487"):
        data.rows(["TCGA-CD-A487"])


def test_gene_lists_are_the_published_sets(stores):
    data = load_genomics(stores["blca"])
    hallmarks = tcga.pathway_table("hallmarks_comps")
    survpath = data.collections["survpath"]
    lists = survpath.gene_lists(data.genes)
    assert survpath.set_names == sorted(survpath.set_names)  # SurvPath's combine order
    for name in ("HALLMARK_HYPOXIA", "HALLMARK_MYC_TARGETS_V1"):
        expected = sorted(set(hallmarks.index[hallmarks[name] == 1]) & set(data.genes))
        assert lists[name] == expected
        assert data.attrs["collections"]["survpath"]["gene_lists"][name] == expected
    families = data.collections["mcat_families"]
    assert families.set_names == tcga.pathway_table("gene_families_6").columns.tolist()
    assert [len(i) for i in families.indices] == [24, 39, 82, 69, 50, 57]


def test_min_genes_threshold_drops_sets_with_reasons(blca):
    genes = blca.columns.tolist()
    for name, (kept, dropped) in COLLECTIONS_MIN5.items():
        filtered = filter_collection(builtin_collection(name), genes, min_genes=5)
        assert (len(filtered.sets), len(filtered.dropped)) == (kept, dropped), name
        assert all(d.n_measured < 5 and "fewer than the minimum of 5" in d.reason for d in filtered.dropped)
        assert all(len(members) >= 5 for members in filtered.sets.values())
    hallmarks = filter_collection(builtin_collection("hallmarks"), genes, min_genes=5)
    assert sorted(d.n_measured for d in hallmarks.dropped) == [3, 4, 4]


def test_store_records_dropped_sets(tmp_path, small):
    path = write(small, tmp_path / "x.csv")
    out = build_genomics_store([path], small.index.tolist(), tmp_path / "g.zarr",
                               GenomicsSettings(genesets=("hallmarks",), min_genes_per_set=2))
    data = load_genomics(out)
    summary = data.attrs["collections"]["hallmarks"]
    assert summary["n_kept"] + summary["n_dropped"] == 50 and summary["n_dropped"] > 0
    assert all("fewer than the minimum of 2" in d["reason"] for d in summary["dropped"])
    assert data.attrs["counts"]["collections"]["hallmarks"]["n_kept"] == len(data.collections["hallmarks"].set_names)
    assert verify_provenance(out) == []


# --- normalisation: no leakage -------------------------------------------------------------------------------

def test_scaler_fitted_on_train_ignores_test_patients(blca):
    split = pd.read_csv(tcga.splits_dir("blca") / "splits_0.csv")
    train = [p for p in split["train"].dropna() if p in blca.index]
    test = [p for p in split["val"].dropna() if p in blca.index]
    assert len(train) > 200 and len(test) > 50
    scaler = GeneScaler().fit(blca, train)
    scaled_train = scaler.transform(blca.loc[train])

    changed = blca.copy()
    rng = np.random.default_rng(0)
    changed.loc[test] = changed.loc[test] * 3.0 + rng.normal(0, 5, (len(test), blca.shape[1]))
    changed.loc[test[:5], changed.columns[:10]] = np.nan
    again = GeneScaler().fit(changed, train)
    assert again.to_dict() == scaler.to_dict()
    pd.testing.assert_frame_equal(again.transform(changed.loc[train]), scaled_train)

    np.testing.assert_allclose(scaler.mean_, blca.loc[train].mean().to_numpy())
    assert not np.allclose(scaler.mean_, blca.mean().to_numpy())
    assert np.allclose(scaled_train.mean().to_numpy(), 0, atol=1e-9)
    assert scaler.train_patients == train


def test_scaler_roundtrip_floor_and_imputation(blca):
    train, test = blca.index[:200].tolist(), blca.index[200:].tolist()
    scaler = GeneScaler().fit(blca, train)
    restored = GeneScaler.from_dict(scaler.to_dict())
    holey = blca.loc[test].copy()
    holey.iloc[0, 3] = np.nan
    np.testing.assert_array_equal(restored.transform(holey).to_numpy(), scaler.transform(holey).to_numpy())
    imputed = scaler.transform(holey).iloc[0, 3]
    median = blca.loc[train].iloc[:, 3].median()
    assert imputed == pytest.approx((median - scaler.mean_[3]) / scaler.scale_[3])
    constant = blca.columns[blca.loc[train].std() == 0]
    assert "VAMP7" in constant and scaler.scale_[blca.columns.get_loc("VAMP7")] == 0.1
    with pytest.raises(ValueError, match="no value in any training patient"):
        frame = blca.loc[train].copy()
        frame["TP53"] = np.nan
        GeneScaler().fit(frame)


# --- reading: barcodes, orientation, scale -------------------------------------------------------------------

def test_barcodes_match_patients_and_resolve_several_samples(tmp_path, small):
    p = small.index.tolist()
    rows = {f"{p[0]}-01A": small.iloc[0], f"{p[0]}-11A": small.iloc[0] + 5,      # primary kept, normal ignored
            f"{p[1]}-01A": small.iloc[1], f"{p[1]}-01B": small.iloc[1] + 2,      # two primaries: averaged
            f"{p[2]}-06A": small.iloc[2], f"{p[2]}-11A": small.iloc[2] - 3,      # no primary: the metastasis
            f"{p[3]}-01A-11R-A277-07": small.iloc[3]}
    frame = pd.DataFrame(rows).T
    path = write(frame, tmp_path / "barcodes.tsv", genes_as_rows=True)
    matrix = read_expression(path)
    assert matrix.orientation == "genes_x_samples"
    assert matrix.patients == p[:4]
    np.testing.assert_allclose(matrix.data.loc[p[0]], small.iloc[0])
    np.testing.assert_allclose(matrix.data.loc[p[1]], small.iloc[1] + 1)
    np.testing.assert_allclose(matrix.data.loc[p[2]], small.iloc[2])
    assert matrix.used_samples[p[0]] == [f"{p[0]}-01A"] and len(matrix.resolutions) == 3
    assert any(p[2] in line and "06A" in line for line in matrix.resolutions)
    mean = read_expression(path, multi_sample="mean")
    np.testing.assert_allclose(mean.data.loc[p[0]], small.iloc[0] + 2.5)
    with pytest.raises(InputError, match=f"patient '{p[0]}' has 2 samples"):
        read_expression(path, multi_sample="error")
    assert patient_of("TCGA-2F-A9KO-01A") == "TCGA-2F-A9KO" and sample_type("TCGA-2F-A9KO-11A") == "11"
    assert patient_of("case-7") == "case-7"
    out = build_genomics_store([path], p[:4], tmp_path / "g.zarr", GenomicsSettings(genesets=("mcat_families",)))
    assert load_genomics(out).patients == p[:4]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
@pytest.mark.parametrize("genes_as_rows", [False, True])
def test_orientation_detected_both_ways(tmp_path, small, suffix, genes_as_rows):
    path = write(small, tmp_path / f"expr{suffix}", genes_as_rows)
    matrix = read_expression(path)
    assert matrix.orientation == ("genes_x_samples" if genes_as_rows else "samples_x_genes")
    pd.testing.assert_frame_equal(matrix.data, small, check_names=False)
    explicit = read_expression(path, orientation=matrix.orientation)
    assert explicit.orientation_reason == "set in the settings"
    pd.testing.assert_frame_equal(explicit.data, matrix.data)


def test_orientation_from_sample_sheet_ids_or_explicit(tmp_path, small):
    frame = small.copy()
    frame.index = [f"case{i}" for i in range(len(frame))]
    path = write(frame, tmp_path / "plain.csv", genes_as_rows=True)
    with pytest.raises(InputError, match="cannot tell which axis holds the samples") as info:
        read_expression(path)
    assert "plain.csv" in str(info.value) and "orientation" in str(info.value)
    assert read_expression(path, patients=frame.index).orientation == "genes_x_samples"
    matrix = read_expression(path, orientation="genes_x_samples")
    assert matrix.patients == frame.index.tolist()
    # a CSV whose header omits the corner cell (R's write.csv) reads the same
    text = path.read_text().splitlines()
    (tmp_path / "r.csv").write_text("\n".join([text[0].split(",", 1)[1]] + text[1:]) + "\n")
    pd.testing.assert_frame_equal(read_expression(tmp_path / "r.csv", orientation="genes_x_samples").data,
                                  matrix.data)


def test_raw_counts_get_log2(tmp_path, small):
    raw = np.round(2.0 ** (small.clip(lower=0) + 3) - 1.0, 3)  # TPM-like, max far above 100
    path = write(raw, tmp_path / "raw.csv")
    matrix = read_expression(path)
    assert matrix.scale["detected"] == "raw" and matrix.scale["transform"] == "log2(x+1)"
    np.testing.assert_allclose(matrix.data.to_numpy(), np.log2(raw.to_numpy() + 1.0))
    kept = read_expression(path, scale="log2")
    assert kept.scale["transform"] is None and np.allclose(kept.data.to_numpy(), raw.to_numpy())
    logged = read_expression(write(small, tmp_path / "log.csv"))
    assert logged.scale["detected"] == "log2" and logged.scale["transform"] is None
    with pytest.raises(InputError, match="negative values"):
        read_expression(tmp_path / "log.csv", scale="raw")
    out = build_genomics_store([path], small.index.tolist(), tmp_path / "g.zarr",
                               GenomicsSettings(genesets=("hallmarks",)))
    data = load_genomics(out)
    assert data.attrs["files"][0]["scale"]["transform"] == "log2(x+1)"
    np.testing.assert_allclose(data.expression, np.log2(raw.to_numpy() + 1.0))


def test_gzipped_text_and_duplicate_mean_policy(tmp_path, small):
    frame = small.copy()
    frame.columns = [*frame.columns[:-1], frame.columns[0]]
    text = frame.rename_axis("sample").to_csv()
    path = tmp_path / "dup.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    matrix = read_expression(path, duplicates="mean")
    gene = small.columns[0]
    assert matrix.duplicate_genes == {gene: 2} and matrix.data.shape[1] == small.shape[1] - 1
    np.testing.assert_allclose(matrix.data[gene], (small.iloc[:, 0] + small.iloc[:, -1]) / 2)
    np.testing.assert_allclose(read_expression(path, duplicates="first").data[gene], small.iloc[:, 0])


# --- bad inputs: a clear error naming the file and the culprit, nothing written ---------------------------------

def _bad_ragged(small, d):
    path = write(small, d / "expr.csv")
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0]
    path.write_text("\n".join(lines) + "\n")
    return path, [small.index[3], "malformed"]


def _bad_garbage(small, d):
    path = d / "expr.parquet"
    path.write_bytes(b"PAR1 this is not parquet at all")
    return path, ["cannot be read as a Parquet table"]


def _bad_duplicate(small, d):
    frame = small.copy()
    frame.columns = [*frame.columns[:-1], frame.columns[5]]
    return write(frame, d / "expr.tsv", genes_as_rows=True), [small.columns[5], "more than once", "duplicates"]


def _bad_all_nan(small, d):
    frame = small.copy()
    frame.iloc[6] = np.nan
    return write(frame, d / "expr.csv"), [small.index[6], "all values are missing"]


def _bad_cell(small, d):
    path = write(small, d / "expr.csv", genes_as_rows=True)
    text = path.read_text().splitlines()
    fields = text[3].split(",")
    fields[2] = "12;5"
    text[3] = ",".join(fields)
    path.write_text("\n".join(text) + "\n")
    return path, [small.columns[2], small.index[1], "12;5", "not a number"]


def _bad_overlap(small, d):
    return write(small, d / "expr.parquet"), ["no patient of the sample sheet", "TCGA-XX-0000"]


BAD = {"ragged row": _bad_ragged, "not parquet": _bad_garbage, "duplicate genes": _bad_duplicate,
       "all-NaN patient": _bad_all_nan, "non-numeric cell": _bad_cell, "no overlap": _bad_overlap}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_named_and_writes_nothing(tmp_path, small, case):
    inputs = tmp_path / "in"
    inputs.mkdir()
    path, expected = BAD[case](small, inputs)
    patients = ["TCGA-XX-0000"] if case == "no overlap" else small.index.tolist()
    out = tmp_path / "out" / "genomics.zarr"
    with pytest.raises(InputError) as info:
        build_genomics_store([path], patients, out, GenomicsSettings(genesets=("mcat_families",)))
    message = str(info.value)
    assert str(path) in message, message
    for needle in expected:
        assert needle in message, (needle, message)
    assert info.value.hint
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_earlier_store_is_kept_when_a_rerun_fails(tmp_path, small):
    out = tmp_path / "g.zarr"
    build_genomics_store([write(small, tmp_path / "ok.csv")], small.index.tolist(), out,
                         GenomicsSettings(genesets=("mcat_families",)))
    before = load_genomics(out).expression.copy()
    with pytest.raises(InputError):
        build_genomics_store([tmp_path / "absent.csv"], small.index.tolist(), out)
    np.testing.assert_array_equal(load_genomics(out).expression, before)


def test_missing_values_policy(tmp_path, small):
    frame = small.copy()
    frame.iloc[:4, 0] = np.nan      # a third of the patients: above 20 %, dropped
    frame.iloc[:2, 1] = np.nan      # a sixth: kept, left missing for the fold's median
    out = build_genomics_store([write(frame, tmp_path / "nan.csv")], frame.index.tolist(), tmp_path / "g.zarr",
                               GenomicsSettings(genesets=("mcat_families",)))
    data = load_genomics(out)
    assert data.attrs["genes_dropped_missing"] == {small.columns[0]: pytest.approx(4 / 12)}
    assert small.columns[0] not in data.genes and data.attrs["counts"]["missing_values"] == 2
    scaled = GeneScaler().fit(data.frame(), data.patients[:8]).transform(data.frame())
    assert not scaled.isna().any().any()


# --- gene sets and tokens ----------------------------------------------------------------------------------

def test_gmt_and_table_formats(tmp_path, blca):
    hallmarks = builtin_collection("hallmarks")
    gmt = tmp_path / "my_sets.gmt"
    gmt.write_text("".join(f"{k}\thttp://example\t" + "\t".join(v) + "\n" for k, v in hallmarks.sets.items()))
    assert read_gmt(gmt) == hallmarks.sets
    families = load_collection(tcga.DATA_DIR / "pathways" / "gene_families_6.csv.gz")
    assert families.sets == builtin_collection("mcat_families").sets and families.source.startswith("columns:")
    out = build_genomics_store([expression_file("blca")], blca.index[:50].tolist(), tmp_path / "g.zarr",
                               GenomicsSettings(genesets=(str(gmt),), min_genes_per_set=5))
    data = load_genomics(out)
    assert data.attrs["counts"]["collections"]["my_sets"]["n_kept"] == 47
    assert "genesets_my_sets_0" in read_provenance(out)["inputs"] and verify_provenance(out) == []
    bad = tmp_path / "bad.gmt"
    bad.write_text("SET_A\tdesc\tTP53\nSET_A\tdesc\tEGFR\n")
    with pytest.raises(InputError, match="line 2: gene set 'SET_A' is defined twice"):
        read_gmt(bad)


def test_rank_score_definition_on_a_small_example():
    values = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, np.nan, 3.0, 2.0]])
    sets = [np.array([2, 3]), np.array([0, 1]), np.array([0, 1, 2, 3]), np.array([1])]
    scores = rank_scores(values, sets)
    np.testing.assert_allclose(scores[0, :3], [0.5, -0.5, 0.0])
    np.testing.assert_allclose(scores[1, :3], [-0.5, 0.5, 0.0])
    np.testing.assert_allclose(scores[2, :2], [0.0, 0.0])     # ties: every gene at the average rank
    assert np.isnan(scores[3, 3])                              # the set's only gene is missing
    np.testing.assert_allclose(scores[3, 0], (2.5 - 1.5) / 1 - 0.5)  # ranks 1, 3, 2 among 3 valued genes


def test_tokens_from_a_fold(stores):
    data = load_genomics(stores["stad"])
    split = pd.read_csv(tcga.splits_dir("stad") / "splits_1.csv")
    train = [p for p in split["train"].dropna() if p in set(data.patients)]
    scaler = GeneScaler().fit(data.expression[data.rows(train)], train, genes=data.genes)
    scaled = scaler.transform(data.expression)
    pathways = data.sets("survpath")
    vectors = pathway_gene_vectors(scaled, pathways)
    assert len(vectors) == 331 and all(v.shape == (len(data.patients), len(i)) for v, i in zip(vectors, pathways))
    assert sum(v.shape[1] for v in vectors) == sum(len(i) for i in pathways)
    families = family_vectors(scaled, data.sets("mcat_families"))
    assert [f.shape[1] for f in families] == [24, 39, 82, 69, 50, 57]
    means = mean_pathway_scores(scaled, pathways)
    np.testing.assert_allclose(means[:, 0], scaled[:, pathways[0]].mean(axis=1))
    by_name = mean_pathway_scores(pd.DataFrame(scaled, columns=data.genes),
                                  data.collections["survpath"].gene_lists(data.genes))
    np.testing.assert_allclose(by_name, means)
    np.testing.assert_allclose(rank_scores(data.expression, pathways), data.collections["survpath"].rank_scores)


def test_several_expression_files(tmp_path, small):
    first = write(small.iloc[:6], tmp_path / "a.csv")
    second = write(small.iloc[6:, :-1], tmp_path / "b.parquet", genes_as_rows=True)  # lacks the last gene
    out = build_genomics_store([first, second, first], small.index.tolist(), tmp_path / "g.zarr",
                               GenomicsSettings(genesets=("mcat_families",), max_nan_fraction=0.5))
    data = load_genomics(out)
    assert data.patients == small.index.tolist() and len(data.attrs["files"]) == 2
    assert np.isnan(data.expression[6:, -1]).all() and data.attrs["counts"]["missing_values"] == 6
    assert {"expression_0", "expression_1"} <= set(read_provenance(out)["inputs"])
    overlap = write(small.iloc[4:], tmp_path / "c.tsv")
    with pytest.raises(InputError, match=f"patient '{small.index[4]}' is also in .*a.csv"):
        build_genomics_store([first, overlap], small.index.tolist(), tmp_path / "h.zarr")
    assert not (tmp_path / "h.zarr").exists()


def test_survpaths_minmax_scaling_is_global_fitted_on_training_rows_and_keeps_zeros():
    train = np.array([[0.0, 2.0, 4.0], [1.0, -2.0, 6.0]])
    scaler = GeneScaler(method="minmax").fit(train, genes=["a", "b", "c"])
    assert (scaler.lo_, scaler.hi_) == (-2.0, 6.0)  # one minimum and maximum over every gene and patient
    other = np.array([[0.0, 6.0, -2.0], [2.0, 10.0, np.nan]])
    scaled = scaler.transform(other)
    assert scaled[0, 0] == 0.0                      # an exact zero stays 0 (SurvPath: "put back in the zeros")
    assert scaled[0, 1] == 1.0 and scaled[0, 2] == -1.0
    assert scaled[1, 1] == 2.0                      # no clipping outside the training range
    assert scaled[1, 2] == 2.0 * (5.0 + 2.0) / 8.0 - 1.0  # NaN imputed with the training median (5) first
    again = GeneScaler.from_dict(scaler.to_dict())
    assert again.method == "minmax" and np.array_equal(again.transform(other), scaled)
    with pytest.raises(ValueError, match="method"):
        GeneScaler(method="quantile")
