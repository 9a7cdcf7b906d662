"""Report generation (ALTER downstream task): text metrics, the MiniLM WordPiece tokenizer wrapper, the
embedding-conditioned report decoder (it must overfit four tiny reports), the nearest-report baseline and the
errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest

from pathmm_pipeline.stats.text_metrics import (
    BLEU_KEYS,
    METEOR_KEY,
    ROUGE_KEY,
    SCORE_KEYS,
    score_generation,
    score_items,
    tokenize,
)

REPORTS = [
    "Invasive ductal carcinoma, grade 2.",
    "Benign breast tissue with fibrocystic change.",
    "Metastatic carcinoma in 3 of 12 lymph nodes.",
    "Lobular carcinoma in situ, margins negative [DATE].",
]


def _lcs(a: list[str], b: list[str]) -> int:
    """Independent longest-common-subsequence length (textbook dynamic programme)."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


# ------------------------------------------------------------------------------------------------ metrics
def test_identical_texts_score_one():
    text = "The tumour is a moderately differentiated invasive ductal carcinoma of the left breast."
    scores = score_generation([text, REPORTS[2]], [text, REPORTS[2]])
    assert set(scores) == set(SCORE_KEYS)
    for key in (*BLEU_KEYS, ROUGE_KEY):
        assert scores[key] == pytest.approx(1.0)
    # METEOR's fragmentation penalty keeps identical texts just under 1: 1 - 0.5 / n^3 for n tokens
    n0, n1 = len(tokenize(text)), len(tokenize(REPORTS[2]))
    assert scores[METEOR_KEY] == pytest.approx(((1 - 0.5 / n0**3) + (1 - 0.5 / n1**3)) / 2)
    assert scores[METEOR_KEY] > 0.99


def test_disjoint_texts_score_zero():
    scores = score_generation(["benign fibroadipose tissue"], ["metastatic melanoma present"])
    assert all(value == 0.0 for value in scores.values()), scores
    assert score_generation(["benign tissue"], [""]) == dict.fromkeys(SCORE_KEYS, 0.0)


def test_partial_match_against_hand_computation():
    ref, hyp = "The cat sat on the mat.", "the cat on mat"
    item = score_items([ref], [hyp])[0]
    r, h = tokenize(ref), tokenize(hyp)
    assert r == ["the", "cat", "sat", "on", "the", "mat"] and h == ["the", "cat", "on", "mat"]
    lcs = _lcs(r, h)
    assert lcs == 4
    precision, recall = lcs / len(h), lcs / len(r)
    assert item[ROUGE_KEY] == pytest.approx(2 * precision * recall / (precision + recall))
    assert item[ROUGE_KEY] == pytest.approx(0.8)  # P = 1, R = 2/3
    # BLEU-1 by hand: 4/4 unigrams match, brevity penalty exp(1 - 6/4)
    assert item["bleu_1"] == pytest.approx(np.exp(1 - 6 / 4))
    # corpus BLEU pools counts: for a single item it equals the sentence BLEU
    assert score_generation([ref], [hyp])["bleu_4"] == pytest.approx(item["bleu_4"])
    assert 0 < item[METEOR_KEY] < 1


def test_tokenization_folds_case_accents_and_punctuation():
    assert tokenize("Résumé: Well-differentiated, 2.3 cm [DATE].") == [
        "resume", "well", "differentiated", "2", "3", "cm", "date"]


@pytest.mark.parametrize("refs, hyps, message", [
    ([], [], "empty"),
    (["a b"], ["a", "b"], "1 references but 2 hypotheses"),
    (["..."], ["a"], "no word token"),
    ("a text", "a text", "single string"),
])
def test_metrics_reject_bad_input(refs, hyps, message):
    with pytest.raises(ValueError, match=message):
        score_generation(refs, hyps)


# ------------------------------------------------------------------------------------------------ generation
@pytest.fixture(scope="module")
def tokenizer():
    from pathmm_pipeline.downstream.report_generation import ReportTokenizer

    return ReportTokenizer()


def test_tokenizer_round_trip(tokenizer):
    sentence = ("Invasive ductal carcinoma, grade 2 (of 3); tumor size 2.3 cm. Margins negative [DATE]. "
                "Well-differentiated, Ki-67 5%.")
    ids = tokenizer.encode(sentence)
    assert ids[0] == tokenizer.bos_id == tokenizer.hf.cls_token_id
    assert ids[-1] == tokenizer.eos_id == tokenizer.hf.sep_token_id
    assert tokenizer.pad_id == tokenizer.hf.pad_token_id
    assert tokenizer.hf.unk_token_id not in ids
    decoded = tokenizer.decode(ids)
    assert decoded == ("invasive ductal carcinoma, grade 2 (of 3); tumor size 2.3 cm. margins negative [DATE]. "
                       "well-differentiated, ki-67 5%.")
    assert tokenize(decoded) == tokenize(sentence)
    # truncation keeps BOS/EOS and max_len tokens in all
    short = tokenizer.encode(sentence, max_len=8)
    assert len(short) == 8 and short[0] == tokenizer.bos_id and short[-1] == tokenizer.eos_id
    # restricted vocabulary: specials first, local <-> WordPiece ids round trip, unseen ids become UNK
    small = tokenizer.restrict([ids])
    assert small.vocab_size == 4 + len(set(ids) - set(tokenizer.specials)) < 40
    assert small.to_global(small.to_local(ids)) == ids
    assert small.decode(small.to_global(small.to_local(ids))) == decoded
    assert small.to_local([tokenizer.encode("zebra")[1]]) == [small.local(tokenizer.unk_id)]


@pytest.fixture(scope="module")
def overfit(torch_one_thread, tokenizer):
    from pathmm_pipeline.downstream.report_generation import GenerationConfig, train_report_decoder

    embeddings = np.random.default_rng(7).normal(size=(4, 16)).astype(np.float32)
    config = GenerationConfig(epochs=40, batch_size=4, lr=3e-3, dropout=0.0, max_len=32, seed=3, progress=False)
    return embeddings, config, train_report_decoder(embeddings, REPORTS, config, tokenizer=tokenizer)


def test_decoder_overfits_four_reports(overfit, tokenizer):
    import torch

    from pathmm_pipeline.downstream.report_generation import generate_reports

    embeddings, config, decoder = overfit
    assert decoder.tokenizer.restricted and decoder.tokenizer.vocab_size < 50
    assert decoder.head.out_features == decoder.tokenizer.vocab_size
    assert decoder.config.n_prefix == 4 and decoder.memory(torch.zeros(2, 16)).shape == (2, 4, 128)
    assert decoder.history[-1]["train_loss"] < decoder.history[0]["train_loss"] / 10
    generated = generate_reports(decoder, embeddings)
    expected = [tokenizer.decode(tokenizer.encode(r)) for r in REPORTS]
    assert generated == expected, generated
    assert score_generation(REPORTS, generated)["bleu_4"] > 0.9
    # one row at a time gives the same texts as the batch
    assert generate_reports(decoder, embeddings[2:3], batch_size=1) == expected[2:3]


def test_training_is_deterministic_and_restores_rng(torch_one_thread, tokenizer):
    import torch

    from pathmm_pipeline.downstream.report_generation import GenerationConfig, train_report_decoder

    embeddings = np.random.default_rng(1).normal(size=(3, 8))
    config = GenerationConfig(epochs=2, batch_size=2, d_model=32, ff_dim=64, max_len=16, seed=5, progress=False)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = train_report_decoder(embeddings, REPORTS[:3], config, tokenizer=tokenizer)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    second = train_report_decoder(torch.tensor(embeddings), REPORTS[:3], config, tokenizer=tokenizer)
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first.history == second.history


def test_nearest_report_baseline(overfit):
    from pathmm_pipeline.downstream.report_generation import nearest_report_baseline

    embeddings, _, _ = overfit
    texts, index, cosine = nearest_report_baseline(embeddings, REPORTS, embeddings)
    assert texts == REPORTS and index.tolist() == [0, 1, 2, 3]
    assert np.allclose(cosine, 1.0)
    # a scaled, slightly perturbed training embedding still retrieves its own report (cosine ignores scale)
    query = 5.0 * embeddings[[2, 0]] + 0.01
    texts, index, _ = nearest_report_baseline(embeddings, REPORTS, query)
    assert texts == [REPORTS[2], REPORTS[0]] and index.tolist() == [2, 0]


def test_evaluate_generation_frame_and_scores(overfit, tokenizer, monkeypatch):
    from pathmm_pipeline.downstream import report_generation as generation

    embeddings, config, decoder = overfit
    # reuse the trained decoder (training is covered above): evaluate on the training patients themselves
    monkeypatch.setattr(generation, "train_report_decoder", lambda *args, **kwargs: decoder)
    frame, corpus = generation.evaluate_generation(embeddings, REPORTS, embeddings[[1, 3]], [REPORTS[1], REPORTS[3]],
                                                   config, test_ids=["p1", "p3"], train_ids=list("abcd"))
    assert frame.patient_id.tolist() == ["p1", "p3"]
    assert frame.retrieved.tolist() == [REPORTS[1], REPORTS[3]] and frame.retrieved_from.tolist() == ["b", "d"]
    assert {f"{p}_{k}" for p in ("decoder", "retrieval") for k in SCORE_KEYS} <= set(frame.columns)
    assert set(corpus) == {"decoder", "retrieval"}
    assert corpus["retrieval"]["bleu_4"] == pytest.approx(1.0)
    assert corpus["decoder"]["bleu_4"] == pytest.approx(1.0) and corpus["decoder"][ROUGE_KEY] == pytest.approx(1.0)
    assert frame.attrs["metrics"]["meteor"].startswith("mean nltk meteor_score")


def test_bad_input_raises_value_error(tokenizer):
    from pathmm_pipeline.downstream.report_generation import (
        GenerationConfig,
        evaluate_generation,
        nearest_report_baseline,
        train_report_decoder,
    )

    config = GenerationConfig(epochs=1, progress=False)
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="texts is empty"):
        train_report_decoder(x, [], config, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="1 texts for 2 embeddings"):
        train_report_decoder(x, ["a report"], config, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="empty or not strings"):
        train_report_decoder(x, ["a report", "   "], config, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="2-D"):
        train_report_decoder(np.zeros(4), ["a"], config, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="NaN"):
        train_report_decoder(np.array([[0.0, np.nan]]), ["a"], config, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="width"):
        nearest_report_baseline(x, ["a", "b"], np.zeros((1, 3)))
    with pytest.raises(ValueError, match="test_texts"):
        evaluate_generation(x, ["a", "b"], x, ["a"], config)
    with pytest.raises(ValueError, match="divisible"):
        GenerationConfig(d_model=30, n_heads=4)
