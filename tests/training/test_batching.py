"""Patients forwarded together in padded batches (``training.settings.batch_tiles``): the bucketing, each batched
model's ``forward_batch`` against its one-patient ``forward`` (outputs, auxiliary losses and gradients), and
whole training runs with and without batching on the toy cohort (same weights, same held-out predictions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_cohort import ToyCohort, build_toy_cohort

from pathmm_pipeline.cohort.splits import make_splits
from pathmm_pipeline.evaluation.predict import predict_logits
from pathmm_pipeline.models import InputDims, PatientInput, TaskSpec, build_model
from pathmm_pipeline.models.registry import MODELS
from pathmm_pipeline.training.batching import bag_size, padded_batches
from pathmm_pipeline.training.finetune import train_fold
from pathmm_pipeline.training.settings import TrainConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

#: small, dropout-free (dropout draws differ between a batch and a loop) forms of every batched model
SMALL = {
    "abmil": {"hidden_dim": 32, "attn_dim": 16, "dropout": 0.0, "rho_dim": 16},
    "transmil": {"dim": 32, "heads": 4, "num_landmarks": 8, "dropout": 0.0},
    "mice": {"dim": 32, "dropout": 0.0, "noisy": False},
    "mice_mamba": {"dim": 32, "dropout": 0.0, "noisy": False, "slide_encoder": "mamba", "mamba_layers": 1},
    "alter": {"dim": 32, "heads": 4, "layers": 1, "n_features": 8, "dropout": 0.0, "max_regions": 16},
}
DIMS = InputDims(wsi=24, genes=20, report=12, n_cancer_types=3, pathway_sizes=(10, 12),
                 pathway_members=(tuple(range(10)), tuple(range(8, 20))))
#: bag sizes on both sides of the Nystrom landmarks (8) and of a square grid, and a one-tile bag
BAGS = (1, 7, 9, 40, 130, 3)


def _patients(model_name: str, seed: int = 0) -> list[PatientInput]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(BAGS):
        cells = torch.randperm(30 * 30, generator=g)[:n]
        multimodal = model_name.startswith(("mice", "alter"))
        out.append(PatientInput(
            wsi=torch.randn(n, DIMS.wsi, generator=g) if not (multimodal and i == 2) else None,
            wsi_coords=torch.stack([cells % 30, cells // 30], dim=1).float() * 448,
            genes=torch.randn(DIMS.genes, generator=g) if multimodal and i % 2 == 0 else None,
            report_tokens=torch.randn(5, DIMS.report, generator=g) if multimodal and i != 3 else None,
            cancer_type=i % 3))
    return [x if x.wsi is not None else PatientInput(genes=x.genes, report_tokens=x.report_tokens,
                                                      cancer_type=x.cancer_type) for x in out]


def test_padded_batches_bucket_the_window_by_bag_size():
    rng = np.random.default_rng(0)
    sizes = [int(v) for v in rng.integers(1, 5000, 37)] + [9000]
    batches = padded_batches(sizes, 8192)
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(sizes[i] for i in b) <= 8192
    ordered = [sizes[i] for b in batches for i in b]
    assert ordered == sorted(sizes)                          # bucketed: neighbours in size share a batch
    assert [9000] in [[sizes[i] for i in b] for b in batches]  # larger than the cap: alone
    assert padded_batches(sizes, 1) == [[i] for i in sorted(range(len(sizes)), key=lambda j: (sizes[j], j))]
    assert bag_size(PatientInput(wsi=torch.zeros(1, 7, 3))) == 7 and bag_size(PatientInput(genes=torch.zeros(4))) == 1
    with pytest.raises(ValueError, match="batch_tiles"):
        padded_batches(sizes, 0)


def test_every_batched_model_is_registered_here():
    batched = {name for name, cls in MODELS.items() if cls.batched}
    assert batched == {name.split("_")[0] for name in SMALL}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_batch_equals_the_one_patient_forward_with_its_gradients(name):
    torch.manual_seed(0)
    model = build_model(name.split("_")[0], DIMS, TaskSpec.survival(4), **SMALL[name]).train()
    xs = _patients(name)

    def run(batched: bool) -> tuple[list, dict[str, torch.Tensor]]:
        model.zero_grad()
        outs = model.forward_batch(xs) if batched else [model(x) for x in xs]
        total = sum((o.logits * torch.arange(1.0, 5.0)).sum() + o.embedding.pow(2).mean()
                    + (o.extras.get("aux_loss") if o.extras.get("aux_loss") is not None else 0.0) for o in outs)
        total.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        return outs, grads

    loop, loop_grads = run(False)
    batch, batch_grads = run(True)
    assert len(batch) == len(xs)
    for a, b in zip(loop, batch):
        assert a.logits.shape == b.logits.shape == (1, 4)
        torch.testing.assert_close(b.logits, a.logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b.embedding, a.embedding, rtol=1e-4, atol=1e-5)
        if a.extras.get("aux_loss") is not None:
            torch.testing.assert_close(b.extras["aux_loss"], a.extras["aux_loss"], rtol=1e-4, atol=1e-6)
        if "attention" in a.extras:
            torch.testing.assert_close(b.extras["attention"], a.extras["attention"], rtol=1e-4, atol=1e-6)
    assert loop_grads.keys() == batch_grads.keys() and loop_grads
    for k in loop_grads:
        torch.testing.assert_close(batch_grads[k], loop_grads[k], rtol=1e-3, atol=1e-5, msg=k)


# ------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> ToyCohort:
    return build_toy_cohort(tmp_path_factory.mktemp("toy"))


@pytest.mark.parametrize("name, task", [("abmil", "survival"), ("transmil", "cox"), ("mice", "survival")])
def test_batched_training_matches_the_one_patient_loop(toy, name, task):
    cohort = toy.cohort(max_tiles=64)
    patients = toy.manifest.drop_duplicates("patient_id").set_index("patient_id")
    fold = make_splits(patients.assign(event=patients.survival_event), k=3, stratify=("event",), seed=0)[0]
    options = {k: v for k, v in SMALL[name].items() if k != "rho_dim"}

    def train(batch_tiles: int | None):
        config = TrainConfig(epochs=2, lr=1e-3, grad_accum=8, warmup_epochs=0.5, patience=None, progress=False,
                             seed=0, device="cpu", model_options=options, batch_tiles=batch_tiles)
        return train_fold(name, task, cohort, fold, config)

    loop, batched, one_each = train(None), train(200), train(1)
    view = cohort.with_scaler(loop.scaler)
    _, reference, _ = predict_logits(loop.model, view, loop.val_patients)
    for result in (batched, one_each):
        assert result.train_patients == loop.train_patients
        np.testing.assert_allclose(result.history.train_loss, loop.history.train_loss, rtol=1e-5)
        _, logits, _ = predict_logits(result.model, cohort.with_scaler(result.scaler), loop.val_patients)
        if task == "cox":  # a risk is defined up to a constant: the Cox loss has no gradient along it
            logits, reference = logits - logits.mean(), reference - reference.mean()
        np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)
        # the weights, not the biases: a bias before a softmax (attention logits, keys) or a Cox risk moves the
        # loss not at all, and Adam turns the rounding-sized gradient along it into lr-sized steps either way
        ours, theirs = result.model.state_dict(), loop.model.state_dict()
        for k in [k for k in theirs if k.endswith("weight")]:
            torch.testing.assert_close(ours[k], theirs[k], rtol=1e-3, atol=1e-4, msg=k)
