"""Caption metrics: the COCO caption scores (BLEU, METEOR, ROUGE-L, CIDEr, SPICE via pycocoevalcap) that never
hang or crash when Java or SPICE's models are missing, and a Java-free CIDEr-D for validation and SCST rewards."""
import contextlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as meteor_module
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice import get_stanford_models as spice_models
from pycocoevalcap.spice import spice as spice_module
from pycocoevalcap.tokenizer import ptbtokenizer

logger = logging.getLogger(__name__)

CAPTION_METRICS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
# Seconds a Java call may run. SPICE parses every reference with CoreNLP: minutes for the 25k references of
# COCO's test split on one machine, hence the generous default.
DEFAULT_JAVA_TIMEOUT = 1800.0

TOKENIZER_DIR = os.path.dirname(os.path.abspath(ptbtokenizer.__file__))
SPICE_DIR = os.path.dirname(os.path.abspath(spice_module.__file__))
PTB_PUNCTUATION = frozenset(ptbtokenizer.PUNCTUATIONS)
NO_JAVA = "java not found on PATH (the metric runs a Java jar; install a Java runtime)"
PTB_DESCRIPTION = "PTBTokenizer (Stanford CoreNLP 3.4.1, as in the COCO caption evaluation)"


@dataclass
class CaptionScores:
    """Corpus-level scores by name (``BLEU-1`` ... ``BLEU-4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``, ``SPICE``),
    the metrics that could not run with the reason, and the tokenizer the captions went through."""

    scores: Dict[str, float] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)
    tokenizer: str = PTB_DESCRIPTION

    def as_dict(self) -> Dict:
        return {"scores": dict(self.scores), "skipped": dict(self.skipped), "tokenizer": self.tokenizer}


def few(ids: Iterable[Hashable], limit: int = 5) -> str:
    """A short, stable listing of ids for error messages."""
    ordered = sorted(ids, key=str)
    shown = ", ".join(repr(i) for i in ordered[:limit])
    return shown + (", ..." if len(ordered) > limit else "")


def check_same_ids(predictions: Mapping, references: Mapping) -> None:
    """Raises ValueError unless every reference id has a prediction and every prediction has references."""
    missing = set(references) - set(predictions)
    if missing:
        raise ValueError(f"no prediction for {len(missing)} of {len(references)} reference ids: {few(missing)}")
    extra = set(predictions) - set(references)
    if extra:
        raise ValueError(f"{len(extra)} prediction ids have no references: {few(extra)}")
    empty = [key for key, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"{len(empty)} ids have an empty list of references: {few(empty)}")


def canonical_metric_names(metrics: Sequence[str]) -> List[str]:
    """The requested metrics spelled as in CAPTION_METRICS (matched case-insensitively), in the order given."""
    by_lower = {name.lower(): name for name in CAPTION_METRICS}
    names = []
    for metric in metrics:
        name = by_lower.get(str(metric).lower())
        if name is None:
            raise ValueError(f"unknown caption metric {metric!r}; choose from {', '.join(CAPTION_METRICS)}")
        if name not in names:
            names.append(name)
    return names


# ----------------------------------------------------------------------------------------------- tokenizers

def one_line(text: str) -> str:
    # The PTB tokenizer reads one caption a line: any line break inside a caption would shift every later one.
    return " ".join(text.split())


def without_punctuation(tokens: Iterable[str]) -> str:
    return " ".join(token for token in tokens if token not in PTB_PUNCTUATION)


def ptb_tokenize(texts: Sequence[str], timeout: float) -> List[str]:
    """Lowercased PTB tokens of each text without punctuation, as pycocoevalcap's PTBTokenizer returns them.

    Runs the same jar, but through stdin with a timeout and without writing a temporary file into the
    installed package (which may be read-only)."""
    jar = os.path.join(TOKENIZER_DIR, ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    if not os.path.isfile(jar):
        raise FileNotFoundError(f"{jar} not found (incomplete pycocoevalcap install)")
    command = ["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
               "-encoding", "utf-8"]
    text = "".join(one_line(t) + "\n" for t in texts)
    done = subprocess.run(command, input=text.encode("utf-8"), capture_output=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"exit status {done.returncode}: {java_message(done.stderr)}")
    lines = done.stdout.decode("utf-8").split("\n")[: len(texts)]
    if len(lines) != len(texts):
        raise RuntimeError(f"returned {len(lines)} lines for {len(texts)} captions")
    return [without_punctuation(line.split()) for line in lines]


# The fallback follows what the PTB tokenizer does to captions: lowercase, clitics and a few fused words
# split off ("is n't", "dog 's", "can not"), brackets escaped (-lrb- ..., kept as pycocoevalcap keeps them),
# punctuation dropped. Abbreviations outside the short list below lose their final period here.
CLITIC = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
FUSED_WORDS = {"cannot": "can not", "gonna": "gon na", "wanna": "wan na", "gotta": "got ta"}
FUSED = re.compile(r"\b(" + "|".join(FUSED_WORDS) + r")\b")
TOKEN = re.compile(r"\b(?:mr|mrs|ms|dr|st|jr|sr|co|inc|ltd|vs|etc)\.|(?:[a-z]\.){2,}|\d+(?:[.,:]\d+)+"
                   r"|\w+(?:[-/']\w+)*|'(?:s|re|ve|ll|d|m)\b|\.\.\.|--|\S")
BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
PYTHON_TOKENIZER_DROPS = PTB_PUNCTUATION | {'"'}


def python_tokenize(text: str) -> str:
    """Pure-Python stand-in for :func:`ptb_tokenize` (used without Java); equal on ordinary captions."""
    text = FUSED.sub(lambda match: FUSED_WORDS[match.group(1)], CLITIC.sub(r" \1", text.lower()))
    tokens = [BRACKETS.get(token, token) for token in TOKEN.findall(text)]
    return " ".join(token for token in tokens if token not in PYTHON_TOKENIZER_DROPS)


def coco_tokens(texts: Sequence[str], java: bool, timeout: float) -> Tuple[List[str], str]:
    """(tokenized texts, description of the tokenizer): the PTB tokenizer, or the Python one without it."""
    if not java:
        return [python_tokenize(text) for text in texts], "Python fallback tokenizer (java not found on PATH)"
    try:
        return ptb_tokenize(texts, timeout), PTB_DESCRIPTION
    except subprocess.TimeoutExpired:
        reason = f"timed out after {timeout:g} s"
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        reason = str(err)
    description = f"Python fallback tokenizer (the PTB tokenizer failed: {reason})"
    logger.warning("caption metrics: %s", description)
    return [python_tokenize(text) for text in texts], description


def tokenize_for_coco(predictions: Mapping, references: Mapping, java: bool,
                      timeout: float) -> Tuple[Dict, Dict, str]:
    """(predictions, references, tokenizer description) in pycocoevalcap's layout: id -> list of strings."""
    keys = list(references)
    texts = [predictions[key] for key in keys] + [ref for key in keys for ref in references[key]]
    tokens, description = coco_tokens(texts, java, timeout)
    tokenized_predictions = {key: [tokens[i]] for i, key in enumerate(keys)}
    tokenized_references, position = {}, len(keys)
    for key in keys:
        count = len(references[key])
        tokenized_references[key] = tokens[position: position + count]
        position += count
    return tokenized_predictions, tokenized_references, description


# -------------------------------------------------------------------------------------------- Java metrics

def java_message(stderr: bytes, limit: int = 400) -> str:
    text = " ".join(stderr.decode("utf-8", "replace").split())
    return (text[-limit:] if text else "no message on stderr")


def call_with_timeout(function: Callable, timeout: float, stop: Callable[[], None]):
    """``function()``, or TimeoutError after ``timeout`` seconds, having called ``stop`` to unblock it."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        stop()
        worker.join(5)
        raise TimeoutError(f"timed out after {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class StoppableMeteor(meteor_module.Meteor):
    """pycocoevalcap's Meteor whose Java process can be killed while a call waits on it.

    The parent's ``__del__`` takes a lock that a failed ``compute_score`` never releases, so it would block
    the garbage collector for ever; this one stops the process without the lock."""

    def stop(self) -> None:
        if self.meteor_p.poll() is None:
            self.meteor_p.kill()
        self.meteor_p.wait()

    def stderr_text(self) -> str:
        self.stop()
        return java_message(self.meteor_p.stderr.read())

    def __del__(self):
        if not hasattr(self, "meteor_p"):  # java could not be started
            return
        self.stop()
        for stream in (self.meteor_p.stdin, self.meteor_p.stdout, self.meteor_p.stderr):
            # Closing stdin flushes what the dead process never read.
            with contextlib.suppress(OSError):
                stream.close()


def meteor_score(predictions: Dict, references: Dict, timeout: float) -> float:
    meteor = StoppableMeteor()
    try:
        score, _ = call_with_timeout(lambda: meteor.compute_score(references, predictions), timeout, meteor.stop)
    except TimeoutError:
        raise  # the caller reports it as a timeout, not as a crash
    except Exception as err:
        raise RuntimeError(f"{type(err).__name__}: {err}; java said: {meteor.stderr_text()}") from err
    finally:
        meteor.stop()
    return float(score)


def spice_model_jars() -> List[str]:
    """The Stanford CoreNLP jars SPICE needs, which pycocoevalcap would download on first use."""
    lib = os.path.join(SPICE_DIR, spice_models.SPICELIB)
    return [os.path.join(lib, f"{spice_models.JAR}{suffix}.jar") for suffix in ("", "-models")]


def spice_unavailable_reason() -> Optional[str]:
    jar = os.path.join(SPICE_DIR, spice_module.SPICE_JAR)
    if not os.path.isfile(jar):
        return f"{jar} not found (incomplete pycocoevalcap install)"
    missing = [path for path in spice_model_jars() if not os.path.isfile(path)]
    if missing:
        names = " and ".join(os.path.basename(path) for path in missing)
        return (f"Stanford CoreNLP models missing: {names} not in {os.path.dirname(missing[0])} "
                f"(not downloaded here; copy them from stanford-corenlp-full-2015-12-09.zip)")
    return None


def mean_spice_f(results: List[Dict]) -> float:
    """Mean of SPICE's per-image F-scores; SPICE writes NaN (or null) where a caption yields no tuple,
    which scores 0 here rather than turning the mean into NaN."""
    values = []
    for item in results:
        value = item["scores"]["All"]["f"]
        value = float("nan") if value is None else float(value)
        values.append(0.0 if math.isnan(value) else value)
    return float(np.mean(values)) if values else 0.0


def spice_score(predictions: Dict, references: Dict, timeout: float, cache_dir: Optional[str] = None) -> float:
    """SPICE through its jar with a timeout (pycocoevalcap's wrapper has none and writes into the package)."""
    keys = list(references)
    items = [{"image_id": i, "test": predictions[key][0], "refs": references[key]} for i, key in enumerate(keys)]
    with tempfile.TemporaryDirectory(prefix="unival-spice-") as folder:
        in_path, out_path = os.path.join(folder, "input.json"), os.path.join(folder, "output.json")
        with open(in_path, "w", encoding="utf-8") as file:
            json.dump(items, file)
        command = ["java", "-jar", "-Xmx8G", spice_module.SPICE_JAR, in_path, "-out", out_path, "-subset", "-silent"]
        if cache_dir:
            command += ["-cache", os.path.abspath(cache_dir)]
        done = subprocess.run(command, cwd=SPICE_DIR, capture_output=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"exit status {done.returncode}: {java_message(done.stderr)}")
        with open(out_path, encoding="utf-8") as file:
            return mean_spice_f(json.load(file))


def run_java_metric(name: str, compute: Callable[[], float], timeout: float,
                    scores: Dict[str, float], skipped: Dict[str, str]) -> None:
    """Stores ``compute()`` under ``name``, or the reason it failed in ``skipped``: a broken Java metric
    costs its own number, never the evaluation."""
    try:
        scores[name] = compute()
    except (TimeoutError, subprocess.TimeoutExpired):
        skipped[name] = f"timed out after {timeout:g} s (raise the Java timeout for large splits)"
    except (OSError, RuntimeError, ValueError, KeyError) as err:  # ValueError: also unreadable JSON output
        skipped[name] = f"failed: {err}"
    if name in skipped:
        logger.warning("caption metrics: %s %s", name, skipped[name])


# ------------------------------------------------------------------------------------------ score_captions

def bleu_scores(gts: Dict, res: Dict) -> Dict[str, float]:
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {f"BLEU-{n + 1}": float(value) for n, value in enumerate(bleu)}


def rouge_scores(gts: Dict, res: Dict) -> Dict[str, float]:
    return {"ROUGE_L": float(Rouge().compute_score(gts, res)[0])}


def cider_scores(gts: Dict, res: Dict) -> Dict[str, float]:
    return {"CIDEr": float(Cider().compute_score(gts, res)[0])}


# Metrics that need no Java: (tokenized references, tokenized predictions) -> scores by name.
PYTHON_SCORERS = {"BLEU": bleu_scores, "ROUGE_L": rouge_scores, "CIDEr": cider_scores}


def score_captions(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                   metrics: Sequence[str] = CAPTION_METRICS, timeout: float = DEFAULT_JAVA_TIMEOUT,
                   spice_cache_dir: Optional[str] = None) -> CaptionScores:
    """COCO caption scores of one prediction per id against that id's references.

    Ids are compared as given (``1`` and ``"1"`` differ). Captions are tokenized as in the COCO evaluation
    (the PTB tokenizer, or :func:`python_tokenize` without Java). METEOR and SPICE need Java, SPICE also
    the CoreNLP jars; when they cannot run, or fail, or pass ``timeout`` seconds, they are listed in
    ``skipped`` with the reason instead of raising. Scores are on pycocoevalcap's scale (CIDEr 1.37, not 137).
    """
    names = canonical_metric_names(metrics)
    check_same_ids(predictions, references)
    if not references:
        raise ValueError("no captions to score")
    java = shutil.which("java") is not None
    # pycocoevalcap's names: res (results) the predictions, gts (ground truths) the references.
    res, gts, tokenizer = tokenize_for_coco(predictions, {k: list(v) for k, v in references.items()}, java, timeout)
    result = CaptionScores(tokenizer=tokenizer)
    scores, skipped = result.scores, result.skipped
    for name in names:
        if name in PYTHON_SCORERS:
            scores.update(PYTHON_SCORERS[name](gts, res))
        elif not java:
            skipped[name] = NO_JAVA
        elif name == "METEOR":
            run_java_metric(name, lambda: meteor_score(res, gts, timeout), timeout, scores, skipped)
        elif name == "SPICE":
            reason = spice_unavailable_reason()
            if reason:
                skipped[name] = reason
            else:
                run_java_metric(name, lambda: spice_score(res, gts, timeout, spice_cache_dir),
                                timeout, scores, skipped)
    return result


# ------------------------------------------------------------------------------------------------- CIDEr-D

@dataclass(frozen=True)
class DocumentFrequency:
    """In how many images' reference sets each n-gram occurs, out of ``num_documents`` images."""

    counts: Mapping[Tuple[str, ...], int]
    num_documents: int


def ngram_counts(words: Sequence[str], max_n: int = 4) -> Counter:
    return Counter(tuple(words[i: i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1))


def reference_lists(references) -> Iterable[Sequence[str]]:
    return references.values() if isinstance(references, Mapping) else references


def cider_document_frequency(references, max_n: int = 4) -> DocumentFrequency:
    """Document frequencies for :func:`cider_d` from a corpus of reference lists (a list of lists, or a
    mapping id -> list), e.g. the training captions that SCST rewards are measured against."""
    counts, num_documents = Counter(), 0
    for refs in reference_lists(references):
        num_documents += 1
        counts.update({gram for ref in refs for gram in ngram_counts(ref.split(), max_n)})
    return DocumentFrequency(counts=dict(counts), num_documents=num_documents)


def tfidf_vectors(text: str, frequency: DocumentFrequency, max_n: int) -> Tuple[List[Dict], np.ndarray, int]:
    """Per n-gram order: the tf-idf weights of the text's n-grams, their norms, and the text's length in words."""
    words = text.split()
    log_documents = math.log(max(frequency.num_documents, 1))
    vectors = [{} for _ in range(max_n)]
    for gram, count in ngram_counts(words, max_n).items():
        # An n-gram absent from the corpus counts as seen once, as in the reference implementation.
        idf = log_documents - math.log(max(1, frequency.counts.get(gram, 0)))
        vectors[len(gram) - 1][gram] = count * idf
    norms = np.array([math.sqrt(sum(w * w for w in vector.values())) for vector in vectors])
    return vectors, norms, len(words)


def clipped_similarity(candidate, reference, sigma: float) -> np.ndarray:
    """CIDEr-D's per-order similarity: cosine with the candidate's weights clipped at the reference's,
    times a Gaussian penalty on the length difference."""
    (cand_vectors, cand_norms, cand_length), (ref_vectors, ref_norms, ref_length) = candidate, reference
    dots = np.array([float(sum(min(weight, ref[gram]) * ref[gram] for gram, weight in cand.items() if gram in ref))
                     for cand, ref in zip(cand_vectors, ref_vectors)])
    norms = cand_norms * ref_norms
    cosines = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return cosines * math.exp(-((cand_length - ref_length) ** 2) / (2 * sigma ** 2))


def cider_d(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
            document_frequency: Optional[DocumentFrequency] = None, sigma: float = 6.0,
            max_n: int = 4) -> Tuple[float, np.ndarray]:
    """CIDEr-D (Vedantam et al. 2015) of already tokenized, lowercased text: (mean, per-item scores in the
    order of ``predictions``). Each score is 10 x the mean over n = 1..4 of the clipped, length-penalised
    tf-idf cosine averaged over references, so it lies in [0, 10].

    Without ``document_frequency`` the idf comes from ``references`` themselves, which reproduces
    pycocoevalcap's ``Cider`` exactly; pass :func:`cider_document_frequency` of a training corpus for SCST.
    """
    check_same_ids(predictions, references)
    frequency = document_frequency or cider_document_frequency(references, max_n)
    scores = np.zeros(len(predictions))
    for row, (key, text) in enumerate(predictions.items()):
        candidate = tfidf_vectors(text, frequency, max_n)
        refs = references[key]
        total = sum(clipped_similarity(candidate, tfidf_vectors(ref, frequency, max_n), sigma) for ref in refs)
        scores[row] = 10.0 * float(np.mean(total)) / len(refs)
    return (float(scores.mean()) if len(scores) else 0.0), scores
