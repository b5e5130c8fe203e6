"""Initialising from BART (--bart-path): the text transformer and BART's token rows are copied, the rest keeps
the model's own initialisation; a BART of another width is refused naming the tensor."""
import argparse

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.models.bart import BARTModel
from fairseq.models.bart.model import bart_base_architecture

from unival.checkpoint import CheckpointError
from unival.models.unival import UnivalConfig, UnivalModel, architecture_defaults

BART_SYMBOLS = 40  # a small BART vocabulary: its rows are the first of the model's


def small_bart(width=64):
    dictionary = Dictionary()
    for number in range(BART_SYMBOLS - len(dictionary)):
        dictionary.add_symbol(f"w{number}")

    class Task:
        source_dictionary = target_dictionary = dictionary

    args = argparse.Namespace(encoder_layers=2, decoder_layers=2, encoder_embed_dim=width, decoder_embed_dim=width,
                              encoder_ffn_embed_dim=128, decoder_ffn_embed_dim=128, encoder_attention_heads=2,
                              decoder_attention_heads=2)
    bart_base_architecture(args)
    torch.manual_seed(5)
    return BARTModel.build_model(args, Task())


def unival_model(**overrides):
    values = architecture_defaults("unival_tiny")
    values.update(encoder_embed_dim=64, decoder_embed_dim=64, encoder_ffn_embed_dim=128, decoder_ffn_embed_dim=128,
                  image_bucket_size=8, **overrides)
    dictionary = Dictionary()
    for number in range(60 - len(dictionary)):
        dictionary.add_symbol(f"w{number}")
    torch.manual_seed(0)
    return UnivalModel.from_config(UnivalConfig(**values), dictionary)


def test_bart_weights_initialise_the_text_transformer_and_its_token_rows(tmp_path):
    bart = small_bart()
    torch.save({"model": bart.state_dict(), "args": None}, tmp_path / "model.pt")
    plain = unival_model().state_dict()
    model = unival_model(bart_path=str(tmp_path / "model.pt")).state_dict()
    source = bart.state_dict()
    for name in ("encoder.layers.1.self_attn.q_proj.weight", "encoder.layers.0.fc2.bias",
                 "decoder.layers.1.encoder_attn.out_proj.weight", "decoder.layers.0.encoder_attn_layer_norm.weight",
                 "encoder.layernorm_embedding.weight", "encoder.embed_positions.weight"):
        assert torch.equal(model[name], source[name]), name
    tokens = model["encoder.embed_tokens.weight"]
    assert torch.equal(tokens[:BART_SYMBOLS], source["encoder.embed_tokens.weight"])
    assert torch.equal(tokens[BART_SYMBOLS:], plain["encoder.embed_tokens.weight"][BART_SYMBOLS:])
    assert torch.equal(model["decoder.output_projection.weight"], tokens)  # still tied
    # what BART has no counterpart of keeps the model's initialisation
    for name in ("encoder.image_proj.weight", "encoder.layers.0.attn_ln.weight", "encoder.pos_q_linear.weight",
                 "encoder.embed_images.conv1.weight"):
        assert torch.equal(model[name], plain[name]), name


def test_a_bart_of_another_width_or_a_file_without_bart_is_refused(tmp_path):
    torch.save({"model": small_bart(width=32).state_dict()}, tmp_path / "narrow.pt")
    with pytest.raises(CheckpointError, match=r"encoder.embed_tokens.weight is \(40, 32\) in BART but "
                                              r"\(60, 64\) in this model"):
        unival_model(bart_path=str(tmp_path / "narrow.pt"))
    torch.save({"model": {"weight": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a BART checkpoint"):
        unival_model(bart_path=str(tmp_path / "other.pt"))
