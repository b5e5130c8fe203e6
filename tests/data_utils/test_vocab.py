"""Tests of the unified vocabulary, the GPT-2 BPE wrapper, text <-> ids and the text normalisation."""
from pathlib import Path

import pytest
import torch
from fairseq.data import Dictionary

from unival.data_utils import vocab
from unival.data_utils.vocab import (GPT2BPE, bin_token, build_unified_dictionary, code_token, decode_tokens,
                                     encode_text, first_bin_index, first_code_index, load_dictionary,
                                     normalize_caption, normalize_phrase, normalize_question, save_dictionary)

PROMPT = " what does the image describe?"


@pytest.fixture(scope="module")
def bpe() -> GPT2BPE:
    return GPT2BPE()


@pytest.fixture(scope="module")
def full_dictionary(gpt2_bpe_dir) -> Dictionary:
    return build_unified_dictionary(bpe_dict_path=str(gpt2_bpe_dir / "dict.txt"))


def test_default_bpe_files_are_gpt2s(gpt2_bpe_dir):
    encoder_json, vocab_bpe = vocab.default_bpe_files()
    assert Path(encoder_json).read_bytes() == (gpt2_bpe_dir / "encoder.json").read_bytes()
    assert Path(vocab_bpe).read_bytes() == (gpt2_bpe_dir / "vocab.bpe").read_bytes()


def test_bpe_encodes_to_gpt2_ids(bpe):
    assert bpe.encode(PROMPT) == "644 857 262 2939 6901 30"
    assert bpe.decode("644 857 262 2939 6901 30") == PROMPT
    assert bpe.decode("644 <mask> 30") == " what<mask>?"
    assert bpe.is_beginning_of_word("644") and not bpe.is_beginning_of_word("30")


def test_full_dictionary_layout(full_dictionary):
    d = full_dictionary
    assert len(d) == 59457 == 4 + 50260 + 1 + 8192 + 1000
    assert [d[i] for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert (d.bos(), d.pad(), d.eos(), d.unk()) == (0, 1, 2, 3)
    assert d[4] == "13" and d.count[4] == 850314647  # first line of BART's dict.txt, count kept
    assert d[50263] == "madeupword0002"
    assert d.index("<mask>") == 50264
    assert first_code_index(d) == 50265 and d.index(code_token(8191)) == 58456
    assert first_bin_index(d) == 58457 and d.index(bin_token(999)) == 59456


def test_prompt_ids_are_barts(full_dictionary, bpe, gpt2_bpe_dir):
    tokens = encode_text(PROMPT, full_dictionary, bpe, append_bos=True, append_eos=True)
    assert tokens.dtype == torch.long
    assert tokens.tolist() == [0, 99, 473, 5, 2274, 6190, 116, 2]
    bart = Dictionary.load(str(gpt2_bpe_dir / "dict.txt"))
    assert tokens[1:-1].tolist() == [bart.index(symbol) for symbol in bpe.encode(PROMPT).split()]


def test_reference_vocabulary_reproduced(gpt2_bpe_dir, fixtures_dir, tmp_path):
    head = tmp_path / "dict_head.txt"
    lines = (gpt2_bpe_dir / "dict.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    head.write_text("".join(lines[:1000]), encoding="utf-8")
    reference = (fixtures_dir / "unival_reference" / "dict_full.txt").read_text(encoding="utf-8").splitlines()
    expected = [line.split("\t")[1] for line in reference]
    d = build_unified_dictionary(bpe_dict_path=str(head), code_dict_size=1024, num_bins=1000)
    assert len(expected) == 3029
    assert d.symbols == expected


def test_encode_decode_round_trip(full_dictionary, bpe):
    text = " A man, riding: a horse's back! 42"
    tokens = encode_text(text, full_dictionary, bpe, append_bos=True, append_eos=True)
    padded = torch.cat([tokens, torch.tensor([full_dictionary.pad()] * 3)])
    assert decode_tokens(padded, full_dictionary, bpe) == text.strip()


def test_encode_truncates_before_bos_and_eos(full_dictionary, bpe):
    tokens = encode_text(PROMPT, full_dictionary, bpe, length=2, append_bos=True, append_eos=True)
    assert tokens.tolist() == [0, 99, 473, 2]
    assert encode_text(PROMPT, full_dictionary, bpe, length=3).tolist() == [99, 473, 5]


def test_corpus_dictionary_orders_by_frequency_then_id(bpe):
    texts = [" the dog", " the cat", " the"]
    d = build_unified_dictionary(corpus_texts=texts, bpe=bpe, code_dict_size=4, num_bins=3)
    the, dog, cat = (bpe.encode(word) for word in (" the", " dog", " cat"))
    assert (the, dog, cat) == ("262", "3290", "3797")
    assert d.symbols == ["<s>", "<pad>", "</s>", "<unk>", "262", "3290", "3797", "<mask>",
                         "<code_0>", "<code_1>", "<code_2>", "<code_3>", "<bin_0>", "<bin_1>", "<bin_2>"]
    assert d.count[4] == 3
    shuffled = build_unified_dictionary(corpus_texts=list(reversed(texts)), bpe=bpe, code_dict_size=4, num_bins=3)
    assert shuffled.symbols == d.symbols


def test_corpus_dictionary_maps_unseen_words_to_unk(bpe):
    d = build_unified_dictionary(corpus_texts=[" the dog"], bpe=bpe, code_dict_size=2, num_bins=2)
    assert encode_text(" the zebra", d, bpe).tolist()[0] == 4
    assert encode_text(" the zebra", d, bpe).tolist()[1:] == [d.unk()] * (len(bpe.encode(" zebra").split()))


def test_saved_dictionary_keeps_ids(bpe, tmp_path):
    d = build_unified_dictionary(corpus_texts=[" a red circle", " a blue square"], bpe=bpe, code_dict_size=8,
                                 num_bins=10)
    path = tmp_path / "run" / "dict.txt"
    save_dictionary(d, str(path))
    assert load_dictionary(str(path)).symbols == d.symbols
    rebuilt = build_unified_dictionary(bpe_dict_path=str(path), code_dict_size=8, num_bins=10)
    assert rebuilt.symbols == d.symbols
    assert [p.name for p in path.parent.iterdir()] == ["dict.txt"]  # no temporary file left


def test_build_needs_exactly_one_source(bpe, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        build_unified_dictionary()
    with pytest.raises(ValueError, match="needs the bpe"):
        build_unified_dictionary(corpus_texts=[" a"])
    missing = tmp_path / "nowhere" / "dict.txt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_unified_dictionary(bpe_dict_path=str(missing))


def test_bad_dictionary_file_names_path(tmp_path):
    path = tmp_path / "dict.txt"
    path.write_text("13 850\nnot-a-count\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}: not a fairseq dictionary"):
        load_dictionary(str(path))


def test_first_bin_index_needs_unified_dictionary():
    with pytest.raises(ValueError, match="<bin_0> is not in the dictionary"):
        first_bin_index(Dictionary())


def test_normalize_caption_removes_punctuation():
    assert normalize_caption("  A Dog's toy,  on the\tTable!  ") == "a dogs toy on the table"
    assert normalize_caption("a b c d e", max_words=3) == "a b c"
    assert normalize_caption("?!.") == ""


def test_normalize_question_follows_ofa():
    assert normalize_question("What's the man/woman holding?") == "what's the man woman holding?"
    assert normalize_question(",.Is it  black-and-white") == "is it black and white?"
    assert normalize_question("how many dogs are on the grass today", max_words=4) == "how many dogs are?"
    assert normalize_question("what color", add_question_mark=False) == "what color"
    assert normalize_question("  ") == ""


def test_normalize_phrase_follows_ofa_pre_caption():
    assert normalize_phrase('"Left" man (in red).') == "left man in red"
    assert normalize_phrase("the dog's well-known toy", max_words=3) == "the dog's well"
