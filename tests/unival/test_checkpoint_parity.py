"""Parity with the original UnIVAL code: its checkpoint, loaded here, must reproduce its outputs."""
import pytest
import torch
from fairseq.data import Dictionary
from fairseq.sequence_generator import SequenceGenerator

import unival

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    folder = fixtures_dir / "unival_reference"
    dictionary = Dictionary()
    for line in (folder / "dict_full.txt").read_text().splitlines():
        index, symbol = line.split("\t")
        if int(index) >= dictionary.nspecial:
            assert dictionary.add_symbol(symbol) == int(index)
    model = unival.load_checkpoint(folder / "checkpoint.pt", dictionary=dictionary)
    batch = torch.load(folder / "batch.pt", weights_only=True)["image"]
    outputs = torch.load(folder / "outputs.pt", weights_only=True)
    return model, dictionary, batch, outputs


def encoder_input(batch):
    return {key: value for key, value in batch.items() if key != "prev_output_tokens"}


def test_encoder_output_matches(reference):
    model, _, batch, outputs = reference
    with torch.no_grad():
        encoded = model.encoder(**encoder_input(batch))["encoder_out"][0]
    assert encoded.shape == outputs["encoder_out"].shape == (268, 3, 256)
    assert (encoded - outputs["encoder_out"]).abs().max() < 1e-4


def test_decoder_logits_match(reference):
    model, _, batch, outputs = reference
    with torch.no_grad():
        logits, _ = model(**batch)
    assert logits.shape == (3, 8, 3029)
    assert (logits - outputs["logits"]).abs().max() < 1e-4
    lprobs = model.get_normalized_probs((logits, None), log_probs=True)
    assert (lprobs - outputs["lprobs"]).abs().max() < 1e-4


def test_greedy_tokens_match_with_full_recompute(reference):
    model, dictionary, batch, outputs = reference
    tokens = torch.full((3, 1), dictionary.bos())
    with torch.no_grad():
        for _ in range(10):
            logits, _ = model(**{**batch, "prev_output_tokens": tokens})
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(tokens, outputs["manual_greedy_tokens"])


@pytest.mark.parametrize("beam", [1, 5])
def test_sequence_generator_matches(reference, beam):
    model, dictionary, batch, outputs = reference
    generator = SequenceGenerator([model], dictionary, beam_size=beam, max_len_a=0, max_len_b=10, min_len=1)
    with torch.no_grad():
        hypotheses = generator.generate([model], {"net_input": encoder_input(batch)}, bos_token=dictionary.bos())
    for row, hypos in enumerate(hypotheses):
        best = hypos[0]
        assert best["tokens"].tolist() == outputs[f"gen_beam{beam}_tokens"][row].tolist()
        assert abs(float(best["score"]) - float(outputs[f"gen_beam{beam}_scores"][row])) < 1e-4
        expected = outputs[f"gen_beam{beam}_positional_scores"][row]
        assert (best["positional_scores"] - expected).abs().max() < 1e-4
