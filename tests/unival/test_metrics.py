"""Caption metrics: exact values on known captions, the paths without Java or SPICE models, timeouts, CIDEr-D."""
import math
import shutil

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from unival import metrics
from unival.metrics import (cider_d, cider_document_frequency, python_tokenize, score_captions,
                            spice_unavailable_reason)

HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="java not found on PATH")

# Three images with captions that share no word, so every n-gram occurs in one image only.
CAPTIONS = {
    "1": "a man riding a brown horse on the beach",
    "2": "two cats sleeping together under some blankets",
    "3": "red bus parked near tall office buildings",
}
IDENTICAL_REFS = {key: [caption, caption] for key, caption in CAPTIONS.items()}


# Those three exactly, plus an empty prediction for a fourth image.
WITH_EMPTY = ({**CAPTIONS, "4": ""}, {**IDENTICAL_REFS, "4": ["a small boat on a calm lake"]})
# Golden values: pycocoevalcap's own PTBTokenizer, Bleu and Meteor classes give these for WITH_EMPTY (BLEU and
# METEOR pool their statistics over images; the empty prediction shortens the corpus). ROUGE-L and CIDEr
# average per image: 1, 1, 1, 0 and 10, 10, 10, 0.
GOLDEN = {"BLEU-4": 0.7376042637485007, "METEOR": 0.8172043010752688, "ROUGE_L": 0.75, "CIDEr": 7.5}


@pytest.fixture(scope="module")
def all_metrics_with_java():
    """The one METEOR run of these tests (a JVM that loads METEOR's paraphrase table: seconds)."""
    if not HAS_JAVA:
        pytest.skip("java not found on PATH")
    return score_captions(*WITH_EMPTY)


def test_identical_captions_score_one_and_cider_ten():
    result = score_captions(CAPTIONS, IDENTICAL_REFS, metrics=("BLEU", "ROUGE_L", "CIDEr"))
    for n in range(1, 5):
        assert result.scores[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-6)
    assert result.scores["ROUGE_L"] == pytest.approx(1.0, abs=1e-12)
    # Every n-gram has idf log(3) > 0 and the candidate equals each reference: cosine 1 at every order.
    assert result.scores["CIDEr"] == pytest.approx(10.0, abs=1e-9)
    assert result.skipped == {}


def test_captions_without_shared_words_score_zero():
    predictions = {"1": "green apples in wooden crates", "2": "snowy mountain peak at dawn",
                   "3": "old clock tower beside river"}
    result = score_captions(predictions, IDENTICAL_REFS, metrics=("BLEU", "CIDEr"))
    for n in range(1, 5):
        assert result.scores[f"BLEU-{n}"] < 1e-6
    assert result.scores["CIDEr"] == 0.0


def test_bleu1_by_hand():
    # Clipped unigram matches a, cat, on, mat: 4 of 5; brevity penalty exp(1 - 6/5) for the 6-word reference.
    result = score_captions({"x": "a cat on a mat"}, {"x": ["a cat sat on the mat"]}, metrics=("BLEU",))
    assert result.scores["BLEU-1"] == pytest.approx(0.8 * math.exp(-0.2), abs=1e-6)


def test_metric_order_and_names_follow_the_request():
    result = score_captions(CAPTIONS, IDENTICAL_REFS, metrics=("cider", "BLEU"))
    assert list(result.scores) == ["CIDEr", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"]
    with pytest.raises(ValueError, match="unknown caption metric 'BLEURT'"):
        score_captions(CAPTIONS, IDENTICAL_REFS, metrics=("BLEURT",))


def test_missing_and_extra_prediction_ids_are_named():
    with pytest.raises(ValueError, match=r"no prediction for 2 of 3 reference ids: '2', '3'"):
        score_captions({"1": CAPTIONS["1"]}, IDENTICAL_REFS)
    with pytest.raises(ValueError, match=r"1 prediction ids have no references: '9'"):
        score_captions({**CAPTIONS, "9": "a dog"}, IDENTICAL_REFS)
    with pytest.raises(ValueError, match="no captions to score"):
        score_captions({}, {})


def test_all_metrics_with_java(all_metrics_with_java):
    result = all_metrics_with_java
    assert result.tokenizer == metrics.PTB_DESCRIPTION
    assert set(result.scores) >= {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE_L", "CIDEr"}
    for name, value in GOLDEN.items():
        assert result.scores[name] == pytest.approx(value, abs=1e-9), name
    assert ("SPICE" in result.scores) != ("SPICE" in result.skipped)


def test_without_java_meteor_and_spice_are_skipped(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    result = score_captions(*WITH_EMPTY)
    assert result.skipped == {"METEOR": metrics.NO_JAVA, "SPICE": metrics.NO_JAVA}
    assert "java not found on PATH" in metrics.NO_JAVA
    assert result.tokenizer == "Python fallback tokenizer (java not found on PATH)"
    # These captions tokenize the same in Python as with the PTB tokenizer: the same scores.
    for name in ("BLEU-4", "ROUGE_L", "CIDEr"):
        assert result.scores[name] == pytest.approx(GOLDEN[name], abs=1e-9), name


def test_spice_without_corenlp_jars_is_skipped_without_download(monkeypatch, tmp_path):
    (tmp_path / "spice-1.0.jar").write_bytes(b"")
    monkeypatch.setattr(metrics, "SPICE_DIR", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("SPICE models must never be downloaded")

    monkeypatch.setattr(metrics.spice_models, "urlretrieve", no_download)
    reason = spice_unavailable_reason()
    assert "stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar not in" in reason
    result = score_captions(CAPTIONS, IDENTICAL_REFS, metrics=("SPICE",))
    assert result.scores == {}
    assert result.skipped["SPICE"] == (reason if HAS_JAVA else metrics.NO_JAVA)


def test_spice_reason_on_this_install():
    reason = spice_unavailable_reason()
    if reason is not None:  # pycocoevalcap ships without the CoreNLP jars
        assert "stanford-corenlp-3.6.0" in reason


def test_spice_mean_counts_nan_as_zero():
    results = [{"scores": {"All": {"f": 0.5}}}, {"scores": {"All": {"f": "NaN"}}}, {"scores": {"All": {"f": None}}}]
    assert metrics.mean_spice_f(results) == pytest.approx(0.5 / 3)


@needs_java
def test_meteor_timeout_is_reported_not_raised():
    result = score_captions(CAPTIONS, IDENTICAL_REFS, metrics=("METEOR", "BLEU"), timeout=0.001)
    assert result.skipped["METEOR"].startswith("timed out after 0.001 s")
    assert result.scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert result.tokenizer == "Python fallback tokenizer (the PTB tokenizer failed: timed out after 0.001 s)"


@needs_java
def test_meteor_crash_is_reported_with_java_message(monkeypatch, tmp_path):
    broken = tmp_path / "broken.jar"
    broken.write_text("not a jar")
    monkeypatch.setattr(metrics.meteor_module, "METEOR_JAR", str(broken))
    result = score_captions(CAPTIONS, IDENTICAL_REFS, metrics=("METEOR",), timeout=60)
    assert result.scores == {}
    assert result.skipped["METEOR"].startswith("failed: ")
    assert "jarfile" in result.skipped["METEOR"]


TRICKY = [
    "A man riding a horse.",
    "The dog's \"ball\" (red) -- isn't it?",
    "I can't believe it's 3.5 miles; cannot go.",
    "A t-shirt and/or a hat [blue] {green} & co.",
    "It costs $1,000 at 5:30 p.m. on U.S. roads...",
    "Two people's dogs' bones, well - maybe!",
    "He said 'hello' and `bye'.",
    "A   spaced    out caption\twith\ntabs and breaks",
    "won't wanna gonna I'm you're we've they'll he'd",
    "",
]


def test_python_tokenizer_by_hand():
    assert python_tokenize(TRICKY[1]) == "the dog 's ball -lrb- red -rrb- is n't it"
    assert python_tokenize(TRICKY[2]) == "i ca n't believe it 's 3.5 miles can not go"


@needs_java
def test_python_tokenizer_matches_ptb_tokenizer():
    assert [python_tokenize(text) for text in TRICKY] == metrics.ptb_tokenize(TRICKY, timeout=60)


# ------------------------------------------------------------------------------------------------- CIDEr-D

def test_cider_d_equals_pycocoevalcap_cider():
    """pycocoevalcap's ``Cider`` is CIDEr-D (clipping, Gaussian length penalty, x10) with document frequencies
    taken from the references being scored, so without a corpus the two agree to rounding."""
    rng = np.random.default_rng(0)
    words = "a the man dog cat on in riding horse sitting table red blue two of with".split()
    caption = lambda low: " ".join(rng.choice(words, size=rng.integers(low, 11)))  # noqa: E731
    references = {i: [caption(3) for _ in range(5)] for i in range(20)}
    predictions = {i: caption(0) for i in range(20)}
    expected_mean, expected = Cider().compute_score(references, {k: [v] for k, v in predictions.items()})
    mean, scores = cider_d(predictions, references)
    assert mean == pytest.approx(expected_mean, abs=1e-12)
    np.testing.assert_allclose(scores, expected, atol=1e-12)


def test_cider_d_orders_exact_partial_unrelated():
    references = {"1": ["a dog runs on the grass", "a brown dog running outside"],
                  "2": ["a plate of food on a table", "a meal served on a white plate"],
                  "3": ["people walking down a city street", "a busy street with people"]}
    candidates = {"exact": "a dog runs on the grass", "partial": "a dog on a table", "unrelated": "two red kites"}
    frequency = cider_document_frequency(references)
    score = {name: cider_d({"1": text}, {"1": references["1"]}, frequency)[0] for name, text in candidates.items()}
    assert score["exact"] > score["partial"] > score["unrelated"] == 0.0
    assert all(0.0 <= value <= 10.0 for value in score.values())


def test_cider_d_by_hand_with_corpus_frequencies():
    # Unigrams only; corpus of 2 images: "a" occurs in both (idf 0), "dog" and "cat" in one (idf log 2).
    frequency = cider_document_frequency([["a dog"], ["a cat"]], max_n=1)
    assert frequency.num_documents == 2
    assert frequency.counts == {("a",): 2, ("dog",): 1, ("cat",): 1}
    predictions = {0: "a dog", 1: "a cat", 2: "dog", 3: ""}
    references = {key: ["a dog"] for key in predictions}
    _, scores = cider_d(predictions, references, frequency, max_n=1)
    # "dog" alone matches the weighted reference exactly, one word shorter: Gaussian penalty exp(-1 / 72).
    np.testing.assert_allclose(scores, [10.0, 0.0, 10.0 * math.exp(-1 / 72), 0.0], atol=1e-12)


def test_cider_d_exact_match_is_ten_and_never_more():
    references = {"a": ["a cat on a mat"] * 3, "b": ["a dog in a park"] * 3, "c": ["two birds in a tree"] * 3}
    mean, scores = cider_d({"a": "a cat on a mat", "b": "a dog in a park park", "c": "birds"}, references)
    assert scores[0] == pytest.approx(10.0, abs=1e-12)
    assert 0.0 < scores[1] < 10.0 and 0.0 < scores[2] < 10.0
    assert mean == pytest.approx(scores.mean())


def test_cider_d_checks_ids():
    with pytest.raises(ValueError, match="no prediction for 1 of 2 reference ids: 'b'"):
        cider_d({"a": "x"}, {"a": ["x"], "b": ["y"]})
