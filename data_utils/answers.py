"""The VQA answer column of the TSV files: ``CONFIDENCE|!+ANSWER`` candidates joined by ``&&``, the answer list
file (one answer a line) that constrains decoding, and the answer normalisation of the official evaluation."""
import re
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

CANDIDATE_SEPARATOR, CONFIDENCE_SEPARATOR = "&&", "|!+"

# The answer normalisation of the official VQA evaluation, without its table of contractions ("dont" stays).
PUNCTUATION = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!]")
PERIOD_NOT_IN_NUMBER = re.compile(r"\.(?!\d)")
COMMA_IN_NUMBER = re.compile(r"(?<=\d),(?=\d)")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}


@lru_cache(maxsize=1 << 18)  # ten human answers per question, mostly the same few thousand strings
def normalize_answer(text: str) -> str:
    """An answer as the official VQA evaluation compares it: lowercased; commas inside numbers and periods not
    followed by a digit removed ("1,000." -> "1000", "2.5" stays); the punctuation ``;/[]"{}()=+\\_-><@`,?!``
    made spaces; number words zero..ten (and "none") made digits; the articles a, an, the dropped; whitespace
    collapsed (tabs and line breaks included). Unlike the official code, contractions are not restored ("dont"
    stays "dont")."""
    text = COMMA_IN_NUMBER.sub("", text.lower())
    text = PUNCTUATION.sub(" ", PERIOD_NOT_IN_NUMBER.sub("", text))
    words = [NUMBER_WORDS.get(word, word) for word in text.split() if word not in ARTICLES]
    return " ".join(words)


def format_confidence(confidence: float) -> str:
    """One decimal when that is exact (1.0, 0.6), else four (VQA's 0.3333)."""
    tenths = confidence * 10
    return f"{confidence:.1f}" if abs(tenths - round(tenths)) < 1e-9 else f"{confidence:.4f}"


def format_answers(candidates: Sequence[Tuple[float, str]]) -> str:
    """[(1.0, "two"), (0.6, "2")] -> "1.0|!+two&&0.6|!+2" (the OFA VQA answer column)."""
    return CANDIDATE_SEPARATOR.join(f"{format_confidence(confidence)}{CONFIDENCE_SEPARATOR}{answer}"
                                    for confidence, answer in candidates)


def parse_answers(field: str) -> List[Tuple[float, str]]:
    """Inverse of :func:`format_answers`; an empty field (test questions) has no candidates."""
    if not field.strip():
        return []
    pairs = []
    for item in field.split(CANDIDATE_SEPARATOR):
        confidence, separator, answer = item.partition(CONFIDENCE_SEPARATOR)
        try:
            value = float(confidence)
        except ValueError:
            value = None
        if not separator or not answer.strip() or value is None or not 0.0 <= value <= 1.0:
            raise ValueError(f"bad answer candidate {item!r} in {field!r} (expected CONFIDENCE|!+ANSWER with a "
                             f"confidence in [0, 1])")
        pairs.append((value, answer.strip()))
    return pairs


def answer_confidences(field: str) -> Dict[str, float]:
    """answer -> confidence (the highest, should an answer repeat)."""
    confidences: Dict[str, float] = {}
    for confidence, answer in parse_answers(field):
        confidences[answer] = max(confidence, confidences.get(answer, 0.0))
    return confidences


def read_answer_list(path: str) -> List[str]:
    """Answers of a list file, one a line, in file order; blank lines and repeats are errors naming the line."""
    answers, seen = [], {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        answer = line.strip()
        if not answer:
            raise ValueError(f"{path}:{number}: empty answer")
        if answer in seen:
            raise ValueError(f"{path}:{number}: answer {answer!r} repeats line {seen[answer]}")
        seen[answer] = number
        answers.append(answer)
    if not answers:
        raise ValueError(f"{path}: no answers")
    return answers
