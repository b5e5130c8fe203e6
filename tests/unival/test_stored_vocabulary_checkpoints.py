"""The vocabulary a checkpoint stores: the Python API decodes with it, `unival convert` carries it as dict.txt,
a dictionary that is not it is refused, and `unival merge` refuses checkpoints trained with different ones."""
import pytest
import torch

import unival
from unival.checkpoint import CheckpointError, placeholder_dictionary, read_checkpoint
from unival.cli import main as cli_main
from unival.data_utils.vocab import (UNKNOWN_FINGERPRINT, VOCABULARY_FINGERPRINT, dictionary_from_symbols,
                                     load_dictionary, vocabulary_fingerprint)

from test_merge import write_checkpoint

SIZE = 60


def symbols(seed):
    """A vocabulary of SIZE symbols: fairseq's specials, then names that depend on ``seed``."""
    return ["<s>", "<pad>", "</s>", "<unk>"] + [f"w{seed}_{index}" for index in range(4, SIZE)]


def with_vocabulary(path, vocabulary):
    """The checkpoint of a model trained with ``vocabulary``: stored in the task state, and its fingerprint in the
    model's weights (and the EMA copy's)."""
    state = torch.load(path, weights_only=False)
    state["task_state"] = {"vocabulary": vocabulary}
    for weights in (state["model"], state["extra_state"].get("ema") or {}):
        weights[VOCABULARY_FINGERPRINT] = torch.tensor(vocabulary_fingerprint(vocabulary))
    torch.save(state, path)
    return path


def test_the_api_decodes_with_the_stored_vocabulary_and_refuses_another(tmp_path):
    path = with_vocabulary(write_checkpoint(tmp_path / "a.pt", seed=1, vocabulary=SIZE), symbols(1))
    model = unival.load_checkpoint(path)
    assert model.encoder.dictionary.symbols == symbols(1) and model.decoder.dictionary[7] == "w1_7"
    with pytest.raises(CheckpointError, match=r"the dictionary given is not the vocabulary .*a.pt was trained with, "
                                              r"which it stores \(60 and 60 symbols; id 4 is '<symbol_4>' in one, "
                                              r"'w1_4' in the other\)"):
        unival.load_checkpoint(path, dictionary=placeholder_dictionary(SIZE))
    state = read_checkpoint(path)
    state["task_state"]["vocabulary"] = symbols(1)[:-1]
    torch.save(state, tmp_path / "short.pt")
    with pytest.raises(CheckpointError, match="stores a vocabulary of 59 symbols for a model of 60"):
        unival.load_checkpoint(tmp_path / "short.pt")
    state["task_state"]["vocabulary"] = symbols(1)[:-2] + ["w1_4", "w1_5"]
    torch.save(state, tmp_path / "twice.pt")
    with pytest.raises(ValueError, match="the stored vocabulary lists 2 symbols twice"):
        unival.load_checkpoint(tmp_path / "twice.pt")


def test_convert_writes_the_vocabulary_as_a_dict_file(tmp_path, capsys):
    path = with_vocabulary(write_checkpoint(tmp_path / "a.pt", seed=1, vocabulary=SIZE), symbols(1))
    assert cli_main(["convert", str(path), "--out", str(tmp_path / "converted")]) == 0
    assert "dict.txt" in capsys.readouterr().out
    assert load_dictionary(str(tmp_path / "converted" / "dict.txt")).symbols == symbols(1)
    assert unival.load_checkpoint(tmp_path / "converted").encoder.dictionary.symbols == symbols(1)
    without = write_checkpoint(tmp_path / "b.pt", seed=1, vocabulary=SIZE)
    assert cli_main(["convert", str(without), "--out", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "dict.txt").exists()


def test_merge_refuses_checkpoints_of_different_vocabularies(tmp_path):
    first = with_vocabulary(write_checkpoint(tmp_path / "a.pt", seed=1, vocabulary=SIZE), symbols(1))
    same = with_vocabulary(write_checkpoint(tmp_path / "b.pt", seed=2, vocabulary=SIZE), symbols(1))
    other = with_vocabulary(write_checkpoint(tmp_path / "c.pt", seed=3, vocabulary=SIZE), symbols(3))
    assert cli_main(["merge", str(first), str(same), "--out", str(tmp_path / "merged.pt")]) == 0
    assert read_checkpoint(tmp_path / "merged.pt")["task_state"]["vocabulary"] == symbols(1)
    with pytest.raises(SystemExit, match=r"c.pt were trained with different vocabularies \(60 and 60 symbols; id 4 "
                                         r"is 'w1_4' in one, 'w3_4' in the other\)"):
        cli_main(["merge", str(first), str(other), "--out", str(tmp_path / "refused.pt")])
    assert not (tmp_path / "refused.pt").exists()


def without_vocabulary(path, fingerprint=True):
    """The checkpoint as saved before vocabularies were stored: no task state; with ``fingerprint=False`` also
    before fingerprints (none in the model's or the EMA copy's weights)."""
    state = torch.load(path, weights_only=False)
    state.pop("task_state", None)
    if not fingerprint:
        for weights in (state["model"], state["extra_state"].get("ema") or {}):
            weights.pop(VOCABULARY_FINGERPRINT, None)
    torch.save(state, path)
    return path


def test_fingerprints_are_compared_where_both_vocabularies_are_known(tmp_path):
    """A model built without its vocabulary (a placeholder) has the unknown fingerprint, 0: `unival convert` of a
    checkpoint that stores no vocabulary wrote it, and the folder was then refused with the right dictionary."""
    plain = write_checkpoint(tmp_path / "plain.pt", seed=1, vocabulary=SIZE)  # a placeholder-built model
    assert int(read_checkpoint(plain)["model"][VOCABULARY_FINGERPRINT]) == UNKNOWN_FINGERPRINT
    assert cli_main(["convert", str(plain), "--out", str(tmp_path / "folder")]) == 0
    dictionary = dictionary_from_symbols(symbols(1), "test")
    model = unival.load_checkpoint(tmp_path / "folder", dictionary=dictionary)
    assert int(model.get_buffer(VOCABULARY_FINGERPRINT)) == vocabulary_fingerprint(symbols(1))
    # weights that know their vocabulary, loaded without it (placeholder), keep their fingerprint
    known = without_vocabulary(with_vocabulary(write_checkpoint(tmp_path / "known.pt", seed=1, vocabulary=SIZE),
                                               symbols(1)))
    model = unival.load_checkpoint(known)
    assert model.encoder.dictionary[5] == "<symbol_5>"
    assert int(model.get_buffer(VOCABULARY_FINGERPRINT)) == vocabulary_fingerprint(symbols(1))
    with pytest.raises(CheckpointError, match="trained with another vocabulary of the same size"):
        unival.load_checkpoint(known, dictionary=dictionary_from_symbols(symbols(3), "test"))


def test_merge_compares_fingerprints_and_takes_checkpoints_saved_before_them(tmp_path):
    new = with_vocabulary(write_checkpoint(tmp_path / "new.pt", seed=1, vocabulary=SIZE), symbols(1))
    old = without_vocabulary(with_vocabulary(write_checkpoint(tmp_path / "old.pt", seed=2, vocabulary=SIZE),
                                             symbols(1)), fingerprint=False)
    for order in ((old, new), (new, old)):
        assert cli_main(["merge", *map(str, order), "--out", str(tmp_path / "merged.pt")]) == 0
        merged = read_checkpoint(tmp_path / "merged.pt")["model"]
        assert int(merged[VOCABULARY_FINGERPRINT]) == vocabulary_fingerprint(symbols(1))
    # checkpoints whose task state is gone are still told apart by their fingerprints
    other = without_vocabulary(with_vocabulary(write_checkpoint(tmp_path / "other.pt", seed=3, vocabulary=SIZE),
                                               symbols(3)))
    with pytest.raises(SystemExit, match="new.pt and .*other.pt were trained with different vocabularies \\(their "
                                         "vocabulary fingerprints differ\\)"):
        cli_main(["merge", str(new), str(old), str(other), "--out", str(tmp_path / "refused.pt")])
    assert not (tmp_path / "refused.pt").exists()


def test_python_api_edges(tmp_path):
    """What a Python user passes: a dict.txt path as the dictionary, a folder with ema=True, a single lambda, a
    single path; and export_safetensors keeps the vocabulary of a model built with it."""
    from unival.convert import export_safetensors
    from unival.data_utils.vocab import save_dictionary

    path = with_vocabulary(write_checkpoint(tmp_path / "a.pt", seed=1, vocabulary=SIZE), symbols(1))
    model = unival.load_checkpoint(path)
    save_dictionary(model.encoder.dictionary, str(tmp_path / "dict.txt"))
    assert unival.load_checkpoint(path, dictionary=tmp_path / "dict.txt").encoder.dictionary.symbols == symbols(1)
    export_safetensors(model, tmp_path / "exported")  # from Python: no vocabulary argument
    assert unival.load_checkpoint(tmp_path / "exported").encoder.dictionary.symbols == symbols(1)
    with pytest.raises(CheckpointError, match=r"ema=True but .*exported is a folder of `unival convert`, which holds "
                                              r"one set of weights"):
        unival.load_checkpoint(tmp_path / "exported", ema=True)
    second = with_vocabulary(write_checkpoint(tmp_path / "b.pt", seed=2, vocabulary=SIZE), symbols(1))
    merged, _ = unival.merge_checkpoints([path, second], 0.25)
    assert merged["merged_from"][0]["weight"] == 0.25 and merged["merged_from"][1]["weight"] == 0.75
    with pytest.raises(TypeError, match="a list of checkpoint paths, got the single path"):
        unival.merge_checkpoints(str(path))
