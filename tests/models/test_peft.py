"""Parameter-efficient finetuning: adapters start as identity functions and train alone, and each selector and
freeze leaves exactly its part of the model training."""
import logging

import pytest
import torch

from unival.models.peft import Adapter
from test_unival import batch, tiny_model


def trainable(model):
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def adapted(**options):
    """A tiny model with adapters, loaded with the weights of the same model without them."""
    plain = tiny_model()
    model = tiny_model(adapter_dim=8, **options)
    state = plain.state_dict()
    model.upgrade_state_dict_named(state, "")
    model.load_state_dict(state, strict=True)
    return plain, model


def test_adapters_start_as_identity_functions_and_train_alone(caplog):
    caplog.set_level(logging.INFO, logger="unival.models.peft")
    plain, model = adapted()
    assert "the checkpoint has no adapters: 16 adapter tensors start as identity functions" in caplog.text
    with torch.no_grad():
        assert torch.equal(plain(**batch())[0], model(**batch())[0])
    assert trainable(model) == {name for name, _ in model.named_parameters() if ".adapter." in name}
    assert len(trainable(model)) == 4 * 4  # down and up, weight and bias, in 2 encoder and 2 decoder layers
    before = {name: value.clone() for name, value in model.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model(**batch())[0].logsumexp(-1).mean().backward()
        optimizer.step()
    # the adapters alone change: the image encoder, which has nothing to train, keeps its BatchNorm statistics
    assert not model.encoder.embed_images.training
    changed = {name for name, value in model.state_dict().items() if not torch.equal(value, before[name])}
    assert changed == trainable(model)
    with torch.no_grad():
        assert not torch.allclose(plain.eval()(**batch())[0], model.eval()(**batch())[0])


def test_adapter_modules_sit_after_every_feed_forward_block():
    model = tiny_model(adapter_dim=8)
    layers = [*model.encoder.layers, *model.decoder.layers]
    assert all(isinstance(layer.adapter, Adapter) and layer.adapter.down.out_features == 8 for layer in layers)
    assert tiny_model().encoder.layers[0].adapter is None
    x = torch.randn(3, 64)
    adapter = layers[0].adapter
    with torch.no_grad():
        adapter.up.weight.fill_(0.01)
        expected = x + torch.nn.functional.gelu(x @ adapter.down.weight.T + adapter.down.bias) @ adapter.up.weight.T
        assert torch.allclose(adapter(x), expected + adapter.up.bias, atol=1e-6)


def test_adapter_train_all_trains_everything_but_what_is_frozen():
    _, model = adapted(adapter_train_all=True, freeze_embeddings=True)
    assert trainable(model) == {name for name, _ in model.named_parameters()} - {"encoder.embed_tokens.weight"}


def test_bitfit_trains_biases_and_with_adapters_their_union():
    model = tiny_model(bitfit=True)
    names = trainable(model)
    assert names and all(name.endswith("bias") for name in names)
    assert names == {name for name, _ in model.named_parameters() if name.endswith("bias")}
    assert model.train().encoder.embed_images.training  # its BatchNorm biases train
    both = trainable(tiny_model(bitfit=True, adapter_dim=8))
    assert both == names | {name for name, _ in tiny_model(adapter_dim=8).named_parameters() if ".adapter." in name}


def test_only_linear_proj_trains_the_media_projections():
    model = tiny_model(only_linear_proj=True, audio_encoder="cnn6", audio_sample_rate=16000, audio_fmax=8000.0)
    assert trainable(model) == {"encoder.image_proj.weight", "encoder.image_proj.bias",
                                "encoder.audio_proj.weight", "encoder.audio_proj.bias"}


def test_freeze_encoder_keeps_the_media_input_path_and_the_shared_embeddings_training():
    model = tiny_model(freeze_encoder=True)
    encoder_parts = {name.split(".")[1] for name in trainable(model) if name.startswith("encoder.")}
    assert encoder_parts == {"embed_tokens", "embed_images", "image_proj", "embed_image_positions",
                             "patch_layernorm_embedding"}
    assert {name for name, _ in model.decoder.named_parameters()} <= {
        name[len("decoder."):] for name in trainable(model)} | {"embed_tokens.weight", "output_projection.weight"}
    # gradients reach the image encoder through the frozen transformer, and nothing frozen gets one
    model.train()
    model(**batch())[0].logsumexp(-1).mean().backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == parameter.requires_grad, name
    assert model.encoder.embed_images.conv1.weight.grad.abs().sum() > 0


def test_freeze_decoder_and_embeddings():
    decoder_frozen = tiny_model(freeze_decoder=True)
    assert not any(name.startswith("decoder.") for name in trainable(decoder_frozen))
    assert "encoder.embed_tokens.weight" in trainable(decoder_frozen)  # the table the decoder shares still trains
    assert all(p.requires_grad for p in decoder_frozen.encoder.layers.parameters())
    embeddings_frozen = tiny_model(freeze_embeddings=True)
    assert {name for name, _ in embeddings_frozen.named_parameters()} - trainable(embeddings_frozen) == {
        "encoder.embed_tokens.weight"}
    assert not embeddings_frozen.decoder.output_projection.weight.requires_grad


def test_a_frozen_backbone_stays_in_eval_mode_and_its_batchnorm_statistics_do_not_move():
    model = tiny_model(freeze_image_encoder=True).train()
    assert not model.encoder.embed_images.training and model.encoder.layers.training
    assert not any(name.startswith("encoder.embed_images.") for name in trainable(model))
    statistics = {name: value.clone() for name, value in model.encoder.embed_images.state_dict().items()}
    model(**batch())[0].sum().backward()
    assert all(torch.equal(value, statistics[name])
               for name, value in model.encoder.embed_images.state_dict().items())
    moving = tiny_model().train()
    moving(**batch())
    assert not torch.equal(moving.encoder.embed_images.state_dict()["bn1.running_mean"],
                           statistics["bn1.running_mean"])


def test_options_that_name_a_missing_part_are_refused():
    with pytest.raises(ValueError, match="--freeze-video-encoder given but the model has no video encoder"):
        tiny_model(freeze_video_encoder=True)
    with pytest.raises(ValueError, match="--adapter-train-all given without adapters"):
        tiny_model(adapter_train_all=True)


def test_a_checkpoint_with_adapters_needs_a_model_built_with_them():
    state = tiny_model(adapter_dim=8).state_dict()
    with pytest.raises(ValueError, match=r"adapters of width 8 \(encoder.layers.0.adapter.down.weight, ...\) but "
                                         r"this model has none: pass --adapter-dim 8"):
        tiny_model().upgrade_state_dict_named(state, "")
