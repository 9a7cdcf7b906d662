"""Slide-level evaluation of mSTAR's stage-1 model without fine-tuning: zero-shot classification by text
prompts, and few-shot linear probing of the slide embeddings.

* :func:`zero_shot_classify` -- each class is described by a list of prompts; the prompts are embedded by the
  text encoder the reports were embedded with (the model's report projection was trained on that encoder's
  space), mapped into the shared space by :meth:`~pathmm_pipeline.models.mstar.MSTAR.text_projection` and
  L2-normalised; a class's text embedding is the normalised mean over its prompts (CLIP's prompt ensemble).
  Slides are mapped by the model's slide projection and normalised; the scores are the cosine similarities,
  the prediction their arg max (``probabilities``: the softmax of the similarities scaled by the model's
  learned ``exp(logit_scale)``).
* :func:`few_shot_curve` -- for each k, ``seeds`` draws of k training slides per class (without replacement;
  a class with fewer than k slides gives all it has), a logistic regression (scikit-learn, L-BFGS, L2) fitted
  on their embeddings, balanced accuracy on the whole test set: mean and standard deviation over the draws.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pathmm_pipeline.models.mstar import MAX_LOGIT_SCALE, MSTAR

TextEncoder = Callable[[list[str]], Any]


@dataclass
class ZeroShotResult:
    """``classes`` (the order of the score columns), ``predicted`` (one class per slide), ``scores`` (n, C)
    cosine similarities and ``probabilities`` (n, C)."""

    classes: list[Any]
    predicted: list[Any]
    scores: np.ndarray
    probabilities: np.ndarray

    def __iter__(self):  # predicted, scores = zero_shot_classify(...)
        return iter((self.predicted, self.scores))


def class_text_embeddings(class_prompts: Mapping[Any, Sequence[str]], text_encoder: TextEncoder,
                          model: MSTAR) -> tuple[list[Any], torch.Tensor]:
    """The classes (in the mapping's order) and their (C, proj_dim) unit-norm prompt-ensemble embeddings."""
    if not class_prompts:
        raise ValueError("class_prompts is empty: give each class a list of prompts")
    classes, rows = list(class_prompts), []
    with torch.no_grad():
        for c in classes:
            prompts = [class_prompts[c]] if isinstance(class_prompts[c], str) else list(class_prompts[c])
            if not prompts:
                raise ValueError(f"class {c!r} has no prompt")
            text = torch.as_tensor(np.asarray(text_encoder(prompts)), dtype=torch.float32)
            if text.dim() != 2 or text.shape[0] != len(prompts):
                raise ValueError(f"the text encoder returned shape {tuple(text.shape)} for {len(prompts)} prompts; "
                                 f"expected ({len(prompts)}, D)")
            projected = F.normalize(model.text_projection(text), dim=-1)
            rows.append(F.normalize(projected.mean(0), dim=-1))
    return classes, torch.stack(rows)


def zero_shot_classify(slide_embeddings: Any, class_prompts: Mapping[Any, Sequence[str]], text_encoder: TextEncoder,
                       model: MSTAR, *, project_slides: bool = True) -> ZeroShotResult:
    """Classify slides by their similarity to each class's prompts (see the module docstring).

    ``slide_embeddings`` (n, E): the model's slide embeddings (``model.slide_embedding``, E = dim), projected
    here; with ``project_slides=False`` they are taken as already in the shared space (E = proj_dim).
    ``text_encoder``: list of prompts -> (m, D_text) array or tensor, the encoder of the reports."""
    was_training = model.training
    model.eval()
    try:
        classes, text = class_text_embeddings(class_prompts, text_encoder, model)
        with torch.no_grad():
            z = torch.as_tensor(np.asarray(slide_embeddings), dtype=torch.float32)
            z = z.reshape(-1, z.shape[-1]) if z.dim() != 2 else z
            if project_slides:
                z = model.slide_projection(z)
            z = model.as_input(z)
            if z.shape[-1] != text.shape[-1]:
                raise ValueError(f"slide embeddings of width {z.shape[-1]} do not live in the {text.shape[-1]}-d "
                                 f"shared space (project_slides={project_slides})")
            sims = F.normalize(z, dim=-1) @ text.to(z).T
            scale = model.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
            probs = torch.softmax(scale * sims, dim=-1)
    finally:
        model.train(was_training)
    scores = sims.cpu().numpy()
    return ZeroShotResult(classes, [classes[i] for i in scores.argmax(axis=1)], scores, probs.cpu().numpy())


def few_shot_curve(train_embeddings: Any, train_labels: Sequence[Any], test_embeddings: Any,
                   test_labels: Sequence[Any], ks: Sequence[int] = (1, 2, 4, 8), seeds: int = 5, *,
                   C: float = 1.0, max_iter: int = 1000, fitted: list[Any] | None = None) -> pd.DataFrame:
    """Balanced accuracy of a logistic regression trained on k slides per class, over ``seeds`` draws per k
    (``fitted``, when given, collects ``(k, seed, classifier)`` of every fit).

    Returns one row per k: ``k``, ``n_train`` (mean training-set size), ``balanced_accuracy_mean``,
    ``balanced_accuracy_std`` (population std over draws), ``n_runs``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    x_train, x_test = _matrix(train_embeddings), _matrix(test_embeddings)
    y_train, y_test = np.asarray(list(train_labels)), np.asarray(list(test_labels))
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError("embeddings and labels differ in length")
    classes = np.unique(y_train)
    if len(classes) < 2:
        raise ValueError(f"few-shot classification needs at least two classes in the training set, got "
                         f"{classes.tolist()}")
    if seeds < 1 or not ks or min(ks) < 1:
        raise ValueError("seeds and every k must be >= 1")
    members = {c: np.flatnonzero(y_train == c) for c in classes}
    rows = []
    for k in ks:
        scores, sizes = [], []
        for seed in range(seeds):
            rng = np.random.default_rng([seed, int(k)])
            pick = np.concatenate([rng.choice(members[c], size=min(int(k), len(members[c])), replace=False)
                                   for c in classes])
            clf = LogisticRegression(C=C, max_iter=max_iter)
            clf.fit(x_train[pick], y_train[pick])
            if fitted is not None:
                fitted.append((int(k), seed, clf))
            scores.append(balanced_accuracy_score(y_test, clf.predict(x_test)))
            sizes.append(len(pick))
        rows.append({"k": int(k), "n_train": float(np.mean(sizes)), "balanced_accuracy_mean": float(np.mean(scores)),
                     "balanced_accuracy_std": float(np.std(scores)), "n_runs": seeds})
    return pd.DataFrame(rows)


def _matrix(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (n, E) array, got shape {x.shape}")
    return x
