"""Constrained decoding with fairseq's SequenceGenerator: a token range for exactly N tokens, an answer trie, and
hypotheses stranded outside the trie when the beam is wider than the choices."""
import torch
from fairseq.data import Dictionary

from unival.constrained import DISALLOWED, ConstrainedEnsemble, RangeConstraint, TrieConstraint, constrained_generator
from unival.data_utils.trie import Trie
from unival.models.unival import UnivalConfig, UnivalModel, architecture_defaults


def tiny(size=40):
    dictionary = Dictionary()
    for index in range(size - len(dictionary)):
        dictionary.add_symbol(f"w{index}")
    values = architecture_defaults("unival_tiny")
    values.update(encoder_embed_dim=32, decoder_embed_dim=32, encoder_ffn_embed_dim=64, decoder_ffn_embed_dim=64,
                  encoder_attention_heads=2, decoder_attention_heads=2, dropout=0.0, image_bucket_size=8,
                  image_encoder_stages=1, encoder_drop_path_rate=0.0, decoder_drop_path_rate=0.0)
    torch.manual_seed(0)
    return UnivalModel.from_config(UnivalConfig(**values), dictionary).eval(), dictionary


def sample(size=3):
    torch.manual_seed(2)
    return {"net_input": {"src_tokens": torch.randint(4, 40, (size, 6)), "src_lengths": torch.full((size,), 6),
                          "patch_images": torch.randn(size, 3, 32, 32),
                          "patch_masks": torch.ones(size, dtype=torch.bool)}}


def test_range_constraint_gives_exactly_four_tokens_of_the_range():
    model, dictionary = tiny()
    generator = constrained_generator([model], dictionary, RangeConstraint(30, 40, 4, dictionary.eos()),
                                      beam_size=5, max_len_a=0, max_len_b=4, min_len=4)
    for hypos in generator.generate([model], sample(), bos_token=dictionary.bos()):
        for hypo in hypos:
            tokens = hypo["tokens"].tolist()
            assert len(tokens) == 5 and tokens[-1] == dictionary.eos()
            assert all(30 <= token < 40 for token in tokens[:4])
            # scores are log-probabilities renormalised over the allowed tokens: each step at most 0
            assert (hypo["positional_scores"] <= 1e-6).all()


def test_renormalised_step_distribution_sums_to_one_over_the_allowed_tokens():
    model, dictionary = tiny()
    ensemble = ConstrainedEnsemble([model], TrieConstraint(Trie([[5, 6, 2], [5, 7, 2], [9, 2]])), dictionary.eos())
    encoder_outs = ensemble.forward_encoder(sample(2)["net_input"])
    state = [{}]
    first, _ = ensemble.forward_decoder(torch.tensor([[0], [0]]), encoder_outs, state)
    assert first.exp()[0].nonzero().flatten().tolist() == [5, 9]
    lprobs, _ = ensemble.forward_decoder(torch.tensor([[0, 5], [0, 9]]), encoder_outs, state)
    probs = lprobs.exp()
    assert torch.allclose(probs.sum(-1), torch.ones(2))
    assert probs[0].nonzero().flatten().tolist() == [6, 7]
    assert probs[1].nonzero().flatten().tolist() == [2]


def test_a_beam_wider_than_the_trie_returns_the_answers_first_and_strands_the_rest():
    model, dictionary = tiny()
    answers = [[5, 6, 2], [9, 2]]
    generator = constrained_generator([model], dictionary, TrieConstraint(Trie(answers)), beam_size=5,
                                      max_len_a=0, max_len_b=3)
    for hypos in generator.generate([model], sample(2), bos_token=dictionary.bos()):
        found = [hypo["tokens"].tolist() for hypo in hypos if hypo["score"] > DISALLOWED / 10]
        assert len(hypos) == 5
        assert sorted(found) == sorted(answers)
        assert all(hypo["tokens"].tolist() in answers for hypo in hypos[:2])
