"""Evaluation is sacred: nothing trained may depend on the held-out patients.

For every registered model, every pretrainable model's pretraining and every downstream evaluation, under both
selection protocols (``last`` and ``inner``), the same fold is trained three times: on the toy cohort, on the
cohort with the held-out patients' outcomes permuted among them, and on the cohort with their inputs (patch
features, expression, report embeddings) permuted among them. Every trained tensor (weights, time bins, gene
scaler, epoch history, probe coefficients, decoder weights) must be bit-identical across the three. The inner
split itself is checked for what it is: stratified, seeded, inside the training patients, written once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_cohort import NO_SLIDES, ToyCohort, build_toy_cohort

from pathmm_pipeline.cohort.dataset import MultimodalCohort
from pathmm_pipeline.cohort.selection import inner_split, read_inner_split, strata_table, write_inner_splits
from pathmm_pipeline.cohort.splits import Fold, make_splits
from pathmm_pipeline.core.provenance import build_provenance
from pathmm_pipeline.core.stores import ArraySpec, open_store, write_store
from pathmm_pipeline.downstream.kinds import (
    data_efficiency,
    linear_probe,
    out_of_distribution,
    report_generation,
    zero_and_few_shot,
)
from pathmm_pipeline.downstream.registry import DOWNSTREAM
from pathmm_pipeline.genomics.stage import GenomicsData
from pathmm_pipeline.models import get_model_class, list_models
from pathmm_pipeline.training.finetune import train_fold
from pathmm_pipeline.training.pretrain import PretrainConfig, load_pretrained_model, pretrain
from pathmm_pipeline.training.settings import TrainConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

#: a tiny build of every registered model; a model registered without one here fails the contract test below
TINY = {
    "abmil": dict(hidden_dim=16, attn_dim=8),
    "transmil": dict(dim=16, heads=2),
    "snn": dict(hidden=(16, 16)),
    "mcat": dict(dim=16, snn_hidden=(16, 16), heads=2, ff_dim=32),
    "survpath": dict(dim=16, snn_hidden=(16, 16)),
    "late_fusion_concat": dict(dim=16, attn_dim=8, snn_hidden=(16, 16), report_hidden=(16, 16)),
    "late_fusion_kronecker": dict(dim=16, attn_dim=8, snn_hidden=(16, 16), report_hidden=(16, 16), scale=4),
    "alter": dict(dim=16, heads=2, layers=1, n_experts=2, top_k=1, n_features=8, region_size=2),
    "mice": dict(dim=16, n_overlap=2, top_k=1, fusion_layers=1, fusion_heads=2),
    "umeml": dict(dim=16, heads=2, proto_layers=1, omic_layers=1, decoder_layers=1),
    "modaltune": dict(n_pathway_tokens=4, gene_dim=8, mixer_depth=1, cancer_type_names=["A", "B"]),
    "mstar": dict(dim=16, proj_dim=8, heads=2),
    "ridge_cox": dict(),
}
SELECTIONS = ("last", "inner")
VARIANTS = ("outcomes", "inputs")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> ToyCohort:
    return build_toy_cohort(tmp_path_factory.mktemp("toy_selection"))


@pytest.fixture(scope="module")
def fold(toy: ToyCohort) -> Fold:
    ids = toy.manifest.patient_id.drop_duplicates().tolist()
    return Fold(0, tuple(ids[:36]), tuple(ids[36:60]))


def _permutation(ids: list[str], seed: int) -> dict[str, str]:
    order = np.random.default_rng(seed).permutation(len(ids))
    return {a: ids[int(b)] for a, b in zip(ids, order)}


def permuted_outcomes(toy: ToyCohort, fold: Fold) -> MultimodalCohort:
    """The cohort with survival time, event, grade and the clinical facts (subtype, stage) permuted among the
    held-out patients."""
    manifest = toy.manifest.copy()
    table = manifest.drop_duplicates("patient_id").set_index("patient_id")
    donor = _permutation(list(fold.val), 1)
    for column in ("survival_time", "survival_event", "grade", "subtype", "stage"):
        values = table[column].to_dict()
        manifest[column] = [values[donor.get(p, p)] for p in manifest.patient_id]
    changed = manifest.drop_duplicates("patient_id").set_index("patient_id").loc[list(fold.val)]
    assert not changed.survival_time.equals(table.loc[list(fold.val)].survival_time)
    return MultimodalCohort.from_manifest(manifest, toy.features_dir, toy.genomics, toy.reports,
                                          pathway_collection="pathways", family_collection="families",
                                          label_column="grade")


def permuted_inputs(toy: ToyCohort, fold: Fold, root) -> MultimodalCohort:
    """The cohort with each modality's data permuted among the held-out patients that have it: their feature
    stores, expression rows and report embeddings (and token states) belong to another held-out patient."""
    base = toy.cohort(label_column="grade")
    val = list(fold.val)
    presence = base.presence_table(val)
    stores = dict(base.feature_stores)
    with_wsi = [p for p in val if presence.loc[p, "wsi"]]
    donor = _permutation(with_wsi, 2)
    for p in with_wsi:
        stores[p] = base.feature_stores[donor[p]]
    g = base.genomics
    rows = {p: i for i, p in enumerate(g.patients)}
    with_genes = [p for p in val if p in rows]
    donor = _permutation(with_genes, 3)
    expression = g.expression.copy()
    for p in with_genes:
        expression[rows[p]] = g.expression[rows[donor[p]]]
    genomics = GenomicsData(path=g.path, patients=list(g.patients), genes=list(g.genes), expression=expression,
                            collections=g.collections, attrs=dict(g.attrs))
    group = open_store(toy.reports)
    ids = [str(x) for x in np.asarray(group["patient_ids"][...]).tolist()]
    with_report = [p for p in val if p in ids]
    donor = _permutation(with_report, 4)
    inverse = {v: k for k, v in donor.items()}  # the row of patient q now belongs to the patient given q's data
    new_ids = [inverse.get(p, p) for p in ids]
    arrays = {name: np.asarray(group[name][...]) for name in ("embeddings", "hidden_states", "attention_mask",
                                                               "patient_chunk_offsets")}
    dims = {"embeddings": ("patient", "feature"), "hidden_states": ("chunk", "token", "feature"),
            "attention_mask": ("chunk", "token"), "patient_chunk_offsets": ("patient_edge",)}
    reports = write_store(root / "permuted_embeddings.zarr", {
        "patient_ids": ArraySpec(np.array(new_ids, dtype=np.dtypes.StringDType()), ("patient",)),
        **{k: ArraySpec(v, dims[k]) for k, v in arrays.items()}}, dict(group.attrs),
        build_provenance("reports_embed", {}, {"toy": "permuted"}))
    patients = toy.manifest.drop_duplicates("patient_id").set_index("patient_id").drop(columns=["slide_id"])
    return MultimodalCohort(patients, stores, genomics, reports, pathway_collection="pathways",
                            family_collection="families", label_column="grade")


@pytest.fixture(scope="module")
def cohorts(toy: ToyCohort, fold: Fold, tmp_path_factory) -> dict[str, MultimodalCohort]:
    root = tmp_path_factory.mktemp("permuted")
    return {"original": toy.cohort(label_column="grade"), "outcomes": permuted_outcomes(toy, fold),
            "inputs": permuted_inputs(toy, fold, root)}


def config(name: str, selection: str, **extra) -> TrainConfig:
    return TrainConfig(epochs=2, lr=1e-3, grad_accum=6, warmup_epochs=0.5, n_bins=2, patience=1, progress=False,
                       device="cpu", selection=selection, model_options=TINY.get(name, {}), **extra)


def assert_same_arrays(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f"{what}: {key} differs"
        else:
            x, y = np.asarray(x), np.asarray(y)
            same = np.array_equal(x, y, equal_nan=x.dtype.kind == "f") if x.shape == y.shape else False
            assert same, f"{what}: {key} differs"


def fitted_fold(result) -> dict:
    """Everything a trained fold carries that the evaluation then uses."""
    out = {f"w.{k}": v for k, v in result.model.state_dict().items()}
    out["time_bins"] = np.array([]) if result.time_bins is None else result.time_bins
    if result.scaler is not None:
        out.update(scaler_mean=result.scaler.mean_, scaler_std=result.scaler.std_,
                   scaler_range=np.array([result.scaler.lo_, result.scaler.hi_]))
    history = result.history.drop(columns=["seconds"])
    out.update(history=history.to_numpy(dtype=np.float64), best=np.array([result.best_epoch]))
    out["patients"] = np.array(result.train_patients + ["|"] + result.inner_val_patients)
    return out


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("name", list_models())  # every registered model; TINY only makes the known ones small
def test_held_out_outcomes_and_inputs_change_no_trained_model(cohorts, fold, name, selection):
    cfg = config(name, selection)
    task = "survival"
    results = {k: train_fold(name, task, c, fold, cfg) for k, c in cohorts.items()}
    reference = fitted_fold(results["original"])
    assert not set(results["original"].train_patients) & set(fold.val)
    if selection == "inner":
        assert results["original"].inner_val_patients
        assert set(results["original"].inner_val_patients) <= set(fold.train)
    for variant in VARIANTS:
        assert_same_arrays(fitted_fold(results[variant]), reference, f"{name}/{selection}: held-out {variant}")


@pytest.mark.parametrize("name", [n for n in list_models() if get_model_class(n).pretrainable])
def test_held_out_outcomes_and_inputs_change_no_pretraining(cohorts, fold, name):
    cfg = PretrainConfig(epochs=1, batch_size=8, n_bins=2, progress=False, model_options=TINY.get(name, {}))
    states = {k: pretrain(name, c, fold.train, cfg).model.state_dict() for k, c in cohorts.items()}
    for variant in VARIANTS:
        assert_same_arrays(states[variant], states["original"], f"pretraining {name}: held-out {variant}")


def _pretrained(name: str, cohort: MultimodalCohort, fold: Fold, tmp_path, tag: str):
    cfg = PretrainConfig(epochs=1, batch_size=8, n_bins=2, progress=False, model_options=TINY.get(name, {}))
    out = tmp_path / f"{name}-{tag}"
    pretrain(name, cohort, fold.train, cfg, out_dir=out)
    return out / "pretrained.pt"


def _reports_table(toy: ToyCohort, tmp_path) -> str:
    from pathmm_pipeline.reports.stage import clean_reports

    rng = np.random.default_rng(0)
    paths = {}
    table = toy.manifest.drop_duplicates("patient_id").set_index("patient_id")
    for p, row in table.iterrows():
        words = rng.choice(["nuclei", "stroma", "invasive", "margin", "necrosis", "glands"], 6).tolist()
        path = tmp_path / f"{p}.txt"
        path.write_text(f"FINAL DIAGNOSIS:\nCarcinoma, {row.grade} grade, with {' and '.join(words)}.\n")
        paths[p] = path
    return str(clean_reports(paths, tmp_path / "reports.parquet", deid=False))


#: how each downstream evaluation is exercised here; a newly registered one fails until it is added
EXERCISED = ("report_generation", "data_efficiency", "linear_probe", "out_of_distribution", "zero_shot")


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("kind", DOWNSTREAM.names())
def test_held_out_outcomes_and_inputs_change_nothing_a_downstream_evaluation_fits(toy, cohorts, fold, kind,
                                                                                  selection, tmp_path):
    if kind not in EXERCISED:
        pytest.fail(f"downstream evaluation {kind!r} is registered but this permutation test does not exercise it")
    fitted = {}
    for variant, cohort in cohorts.items():
        if kind == "report_generation":
            result = train_fold("alter", "survival", cohort, fold, config("alter", selection))
            view = cohort.with_scaler(result.scaler)
            out = report_generation(result.model, view, fold, _reports_table(toy, tmp_path),
                                    {"epochs": 2, "d_model": 16, "n_heads": 2, "n_layers": 1, "ff_dim": 32},
                                    selection=selection)
        elif kind == "data_efficiency":
            out = data_efficiency("mice", "survival", cohort, fold, config("mice", selection),
                                  pretrained=_pretrained("mice", cohort, fold, tmp_path, variant),
                                  fractions=(0.5, 1.0))
        elif kind == "out_of_distribution":
            out = out_of_distribution(_pretrained("modaltune", cohort, fold, tmp_path, variant), cohort, fold,
                                      "survival", selection=selection)
            assert {"transfer", "in-distribution", "untuned"} == set(out.table.transfer)
        elif kind == "linear_probe":
            net = load_pretrained_model(_pretrained("modaltune", cohort, fold, tmp_path, variant))
            out = linear_probe(net, cohort.for_fold(fold.train), fold, "survival", selection=selection)
        else:
            net = load_pretrained_model(_pretrained("mstar", cohort, fold, tmp_path, variant))

            def text(texts):
                return np.stack([np.random.default_rng(len(t)).normal(size=8) for t in texts]).astype(np.float32)

            out = zero_and_few_shot(net, cohort.for_fold(fold.train), fold, text, ks=(1, 2), seeds=2,
                                    prompts={"A": ["type A"], "B": ["type B"]}, selection=selection)
        assert (out.table.selection == selection).all()
        fitted[variant] = out.fitted
    assert fitted["original"], kind
    for variant in VARIANTS:
        assert_same_arrays(fitted[variant], fitted["original"], f"{kind}/{selection}: held-out {variant}")


# ------------------------------------------------------------------------------------------- the inner split
def test_inner_split_is_stratified_seeded_and_inside_the_training_patients(toy, tmp_path):
    table = strata_table(toy.manifest.drop_duplicates("patient_id").set_index("patient_id"))
    splits = make_splits(table, k=3, stratify=("event",), seed=0)
    written = write_inner_splits(splits, table, tmp_path, fraction=0.25, seed=7)
    assert [p.name for p in written] == ["inner_0.csv", "inner_1.csv", "inner_2.csv"]
    for f in splits:
        rest, val = read_inner_split(tmp_path / f"inner_{f.index}.csv", f.index, f.train)
        assert set(rest) | set(val) == set(f.train) and not set(rest) & set(val)
        assert not set(val) & set(f.val)
        assert abs(len(val) - 0.25 * len(f.train)) <= 3  # round(0.25 n) per stratum
        share = table.loc[val].event.mean(), table.loc[list(f.train)].event.mean()
        assert abs(share[0] - share[1]) < 0.15  # stratified on the event
        assert (rest, val) == inner_split(table, f.train, 0.25, 7, key=f.index)  # seeded, same as the file
    other = inner_split(table, splits[0].train, 0.25, 8, key=0)[1]
    assert other != read_inner_split(tmp_path / "inner_0.csv", 0, splits[0].train)[1]
    with pytest.raises(Exception, match="not training patients"):
        read_inner_split(tmp_path / "inner_0.csv", 0, splits[1].train)


def test_a_model_without_a_usable_inner_patient_is_refused(toy):
    cohort = toy.cohort()
    ids = toy.manifest.patient_id.drop_duplicates().tolist()
    fold = Fold(0, (*ids[:6], *NO_SLIDES), tuple(ids[60:]))
    with pytest.raises(ValueError, match="no inner-validation patient is usable by model 'abmil'"):
        train_fold("abmil", "survival", cohort, fold, config("abmil", "inner"),
                   inner=(list(ids[:6]), list(NO_SLIDES)))
    with pytest.raises(ValueError, match="are not training patients"):
        train_fold("abmil", "survival", cohort, fold, config("abmil", "inner"), inner=(list(ids[:6]), [ids[70]]))


@pytest.mark.parametrize("name", ["snn", "survpath"])
def test_survpaths_minmax_scaling_is_fitted_on_training_patients_only(cohorts, fold, name):
    """``gene_scaling: minmax`` (one minimum and maximum over the training matrix) sees no held-out patient."""
    import copy

    views = {}
    for variant, cohort in cohorts.items():
        views[variant] = copy.copy(cohort)
        views[variant].gene_scaling = "minmax"
    results = {k: train_fold(name, "survival", c, fold, config(name, "last")) for k, c in views.items()}
    assert results["original"].scaler.method == "minmax"
    reference = fitted_fold(results["original"])
    for variant in VARIANTS:
        assert_same_arrays(fitted_fold(results[variant]), reference, f"{name}/minmax: held-out {variant}")
