"""The answer trie (allowed next tokens, masks for decoding and for the loss) and the VQA answer column."""
import pytest
import torch

from unival.data_utils.answers import answer_confidences, format_answers, parse_answers, read_answer_list
from unival.data_utils.trie import Trie

EOS, PAD = 2, 1
ANSWERS = [[10, 11, EOS], [10, 12, EOS], [20, EOS]]


def test_next_tokens_follow_the_stored_sequences():
    trie = Trie(ANSWERS)
    assert sorted(trie.next_tokens([])) == [10, 20]
    assert sorted(trie.next_tokens([10])) == [11, 12]
    assert trie.next_tokens([10, 12]) == [EOS]
    assert trie.next_tokens([11]) == []
    assert [10, 12, EOS] in trie and [10, EOS] not in trie and [10] not in trie
    assert len(trie) == 3


def test_prefix_mask_rows():
    mask = Trie(ANSWERS).prefix_mask(torch.tensor([[10], [20], [30]]), vocab_size=25)
    assert mask.shape == (3, 25)
    assert mask[0].nonzero().flatten().tolist() == [11, 12]
    assert mask[1].nonzero().flatten().tolist() == [EOS]
    assert not mask[2].any()


def test_target_masks_allow_the_continuations_of_each_prefix_and_nothing_on_padding():
    mask = Trie(ANSWERS).target_masks(torch.tensor([10, 11, EOS, PAD]), vocab_size=25, pad=PAD)
    assert mask[0].nonzero().flatten().tolist() == [10, 20]
    assert mask[1].nonzero().flatten().tolist() == [11, 12]
    assert mask[2].nonzero().flatten().tolist() == [EOS]
    assert not mask[3].any()


def test_answer_column_round_trip_and_confidences():
    candidates = [(1.0, "two"), (1 / 3, "2"), (0.6, "a pair")]
    field = format_answers(candidates)
    assert field == "1.0|!+two&&0.3333|!+2&&0.6|!+a pair"
    assert parse_answers(field) == [(1.0, "two"), (0.3333, "2"), (0.6, "a pair")]
    assert answer_confidences("0.3|!+red&&1.0|!+red&&0.6|!+blue") == {"red": 1.0, "blue": 0.6}
    assert parse_answers("") == []


@pytest.mark.parametrize("field", ["red", "1.0|!+", "x|!+red", "1.5|!+red"])
def test_malformed_answer_fields_are_errors(field):
    with pytest.raises(ValueError, match="bad answer candidate"):
        parse_answers(field)


def test_answer_list_errors_name_the_line(tmp_path):
    path = tmp_path / "answers.txt"
    path.write_text("yes\nno\n")
    assert read_answer_list(str(path)) == ["yes", "no"]
    path.write_text("yes\nno\nyes\n")
    with pytest.raises(ValueError, match=r"answers.txt:3: answer 'yes' repeats line 1"):
        read_answer_list(str(path))
    path.write_text("yes\n\nno\n")
    with pytest.raises(ValueError, match=r"answers.txt:2: empty answer"):
        read_answer_list(str(path))
