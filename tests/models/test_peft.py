"""Parameter-efficient finetuning: adapters start as identity functions and train alone, and each selector and
freeze leaves exactly its part of the model training."""
import logging

import pytest
import torch

from unival.models.layers import MultiheadAttention
from unival.models.peft import Adapter, fixed_parameter_ids, prompts
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
    assert "the checkpoint has no adapters: this model's 16 tensors of them keep their initialisation" in caplog.text
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


def test_unfreeze_trains_everything_but_what_is_frozen():
    _, model = adapted(unfreeze=True, freeze_embeddings=True)
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


def test_freeze_batchnorm_fixes_the_backbones_batchnorms_while_their_convolutions_train():
    model = tiny_model(freeze_batchnorm=True, audio_encoder="cnn6", audio_sample_rate=16000, audio_fmax=8000.0)
    batchnorms = {name: module for name, module in model.named_modules()
                  if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)}
    assert {name.split(".")[1] for name in batchnorms} == {"embed_images", "embed_audios"}
    frozen = {name for name, _ in model.named_parameters()} - trainable(model)
    fixed = {name for name, parameter in model.named_parameters() if id(parameter) in fixed_parameter_ids(model)}
    assert len(fixed) == 7  # the audio front end's filters and PANN's unused head, never trained
    assert frozen - fixed == {f"{name}.{kind}" for name in batchnorms for kind in ("weight", "bias")}
    model.train()
    assert model.encoder.embed_images.training and model.encoder.layers.training
    assert not any(module.training for module in batchnorms.values())
    before = {name: value.clone() for name, value in model.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    optimizer.zero_grad()
    model(**batch())[0].logsumexp(-1).mean().backward()
    optimizer.step()
    changed = {name for name, value in model.state_dict().items() if not torch.equal(value, before[name])}
    assert "encoder.embed_images.conv1.weight" in changed
    # scale, shift and statistics (running mean and variance, batch counter) of every BatchNorm stay as loaded
    assert not any(name.startswith(tuple(f"{bn}." for bn in batchnorms)) for name in changed)
    # in training mode, they would have moved
    moving = tiny_model().train()
    statistics = moving.encoder.embed_images.bn1.running_mean.clone()
    moving(**batch())
    assert not torch.equal(moving.encoder.embed_images.bn1.running_mean, statistics)


def test_options_that_name_a_missing_part_are_refused():
    with pytest.raises(ValueError, match="--freeze-video-encoder given but the model has no video encoder"):
        tiny_model(freeze_video_encoder=True)
    with pytest.raises(ValueError, match="--unfreeze given without adapters or prompts"):
        tiny_model(unfreeze=True)


def test_a_checkpoint_with_adapters_needs_a_model_built_with_them(caplog):
    state = tiny_model(adapter_dim=8).state_dict()
    with pytest.raises(ValueError, match=r"the checkpoint has adapters \(encoder.layers.0.adapter.down.weight, ...\) "
                                         r"but this model has none: pass --adapter-dim 8"):
        tiny_model().upgrade_state_dict_named(state, "")
    # logged too: fairseq-train buries the exception in a traceback of its own
    assert [record.levelname for record in caplog.records if "does not fit this model" in record.message] == ["ERROR"]
    assert "the checkpoint does not fit this model: the checkpoint has adapters" in caplog.text


def test_a_prompt_is_attended_by_every_query_before_the_sequences_own_keys():
    """Prefix tuning in one attention module, against the product written out: the prompt's keys and values come
    first, without a position bias, and stay visible where the sequence's keys are masked."""
    torch.manual_seed(0)
    attention = MultiheadAttention(8, 2, prompt_length=3).eval()
    x = torch.randn(4, 2, 8)  # (T, B, C)
    bias = torch.randn(2, 2, 4, 4)
    bias[:, :, :, 1] = float("-inf")
    with torch.no_grad():
        out = attention(x, x, bias)
        heads = lambda t: t.view(t.size(0), 2, 2, 4).permute(1, 2, 0, 3)  # noqa: E731  (T, B, C) -> (B, H, T, d)
        prompt_keys = attention.prompt[0].view(1, 3, 2, 4).permute(0, 2, 1, 3).expand(2, -1, -1, -1)
        prompt_values = attention.prompt[1].view(1, 3, 2, 4).permute(0, 2, 1, 3).expand(2, -1, -1, -1)
        keys = torch.cat([prompt_keys, heads(attention.k_proj(x))], dim=2)
        values = torch.cat([prompt_values, heads(attention.v_proj(x))], dim=2)
        scores = heads(attention.q_proj(x)) @ keys.transpose(-1, -2) * attention.scaling
        weights = (scores + torch.cat([torch.zeros(2, 2, 4, 3), bias], dim=-1)).softmax(-1)
        assert (weights[..., :3] > 0).all() and (weights[..., 4] == 0).all()
        expected = (weights @ values) * attention.c_attn.view(1, -1, 1, 1)
        expected = attention.out_proj(expected.permute(2, 0, 1, 3).reshape(4, 2, 8))
    assert torch.allclose(out, expected, atol=1e-6)


def test_prompts_train_alone_and_incremental_decoding_keeps_them_in_its_cache(caplog):
    caplog.set_level(logging.INFO, logger="unival.models.peft")
    plain = tiny_model()
    model = tiny_model(encoder_prompt_length=3, decoder_prompt_length=2)
    assert trainable(model) == {f"{part}.layers.{i}.self_attn.prompt" for part in ("encoder", "decoder")
                                for i in range(2)}
    state = plain.state_dict()
    model.upgrade_state_dict_named(state, "")
    model.load_state_dict(state, strict=True)
    assert "the checkpoint has no encoder prompts" in caplog.text and "no decoder prompts" in caplog.text
    inputs = batch(target=6)
    tokens = inputs.pop("prev_output_tokens")
    with torch.no_grad():
        assert not torch.allclose(plain(**inputs, prev_output_tokens=tokens)[0],
                                  model(**inputs, prev_output_tokens=tokens)[0], atol=1e-4)
        encoded = model.encoder(**inputs)
        full, _ = model.decoder(tokens, encoded)
        cache = {}
        steps = [model.decoder(tokens[:, :t], encoded, incremental_state=cache)[0][:, -1] for t in range(1, 7)]
    assert torch.allclose(torch.stack(steps, dim=1), full, atol=1e-5)
    model.train()(**inputs, prev_output_tokens=tokens)[0].logsumexp(-1).mean().backward()
    assert all(prompt.grad.abs().sum() > 0 for prompt in prompts(model))


def test_a_checkpoint_with_prompts_needs_a_model_built_with_them():
    state = tiny_model(decoder_prompt_length=5).state_dict()
    with pytest.raises(ValueError, match=r"the checkpoint has decoder prompts \(decoder.layers.0.self_attn.prompt, "
                                         r"...\) but this model has none: pass --decoder-prompt-length 5"):
        tiny_model().upgrade_state_dict_named(state, "")


def projected(**options):
    return tiny_model(encoder_prompt_length=3, decoder_prompt_length=2, encoder_prompt_projection=True,
                      decoder_prompt_projection=True, decoder_prompt_dim=16, **options)


def test_a_prompt_projection_computes_each_layers_prompt_and_trains_alone(caplog):
    caplog.set_level(logging.INFO, logger="unival.models.peft")
    model = projected()
    names = ("embedding", "hidden.weight", "hidden.bias", "out.weight", "out.bias")
    assert trainable(model) == {f"{part}.prompt_projection.{name}" for part in ("encoder", "decoder") for name in names}
    assert model.encoder.prompt_projection.hidden.out_features == 128  # twice the embedding size by default
    assert model.decoder.prompt_projection.hidden.out_features == 16
    # layer i's keys and values: the i-th pair of embedding-sized slices of the MLP's output, at each prompt position
    projection = model.decoder.prompt_projection
    with torch.no_grad():
        hidden = torch.relu(projection.embedding @ projection.hidden.weight.T + projection.hidden.bias)
        output = (hidden @ projection.out.weight.T + projection.out.bias).view(2, 2 * 2, 64)  # (L, layers * 2, C)
        assert torch.allclose(projection()[1, 0], output[:, 2], atol=1e-6)  # layer 1's keys
        assert torch.allclose(projection()[1, 1], output[:, 3], atol=1e-6)  # layer 1's values
    # the model being adapted has no prompts: the projections keep their initialisation
    state = tiny_model().state_dict()
    model.upgrade_state_dict_named(state, "")
    model.load_state_dict(state, strict=True)
    assert "the checkpoint has no encoder prompt projection weights: this model's 5 tensors" in caplog.text
    inputs = batch(target=6)
    tokens = inputs.pop("prev_output_tokens")
    calls = []
    projection.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        encoded = model.encoder(**inputs)
        full, _ = model.decoder(tokens, encoded)
        cache = {}
        steps = [model.decoder(tokens[:, :t], encoded, incremental_state=cache)[0][:, -1] for t in range(1, 7)]
    assert torch.allclose(torch.stack(steps, dim=1), full, atol=1e-5)
    assert len(calls) == 2  # the full pass, then the first incremental step only: the key cache holds the prompts
    model.train()(**inputs, prev_output_tokens=tokens)[0].logsumexp(-1).mean().backward()
    assert all(parameter.grad.abs().sum() > 0 for parameter in prompts(model))


def test_a_prompt_projection_folds_into_plain_prompts(caplog):
    caplog.set_level(logging.INFO, logger="unival.models.peft")
    model = projected()
    with torch.no_grad():
        for parameter in prompts(model):
            parameter.add_(torch.randn_like(parameter) * 0.1)  # away from the small initial prompts
    state = model.state_dict()
    plain = tiny_model(encoder_prompt_length=3, decoder_prompt_length=2)
    plain.upgrade_state_dict_named(state, "")
    plain.load_state_dict(state, strict=True)
    assert "the checkpoint's decoder prompt projection is folded: its 2 layers' prompts load as computed" in caplog.text
    with torch.no_grad():
        assert torch.equal(plain.encoder.layers[1].self_attn.prompt, model.encoder.prompt_projection()[1])
        assert torch.allclose(plain(**batch())[0], model(**batch())[0], atol=1e-5)
        assert not torch.allclose(tiny_model()(**batch())[0], model(**batch())[0], atol=1e-3)


def test_prompt_projection_refusals():
    with pytest.raises(ValueError, match=r"the checkpoint's encoder prompts are plain tensors "
                                         r"\(encoder.layers.0.self_attn.prompt, ...\), which no prompt projection "
                                         r"computes: build the model without --encoder-prompt-projection"):
        projected().upgrade_state_dict_named(tiny_model(encoder_prompt_length=3).state_dict(), "")
    with pytest.raises(ValueError, match=r"the checkpoint has decoder prompt projection weights "
                                         r"\(decoder.prompt_projection.embedding, ...\) but this model has none: "
                                         r"pass --decoder-prompt-length 2 --decoder-prompt-projection"):
        tiny_model(encoder_prompt_length=3).upgrade_state_dict_named(projected().state_dict(), "")
    with pytest.raises(ValueError, match="--encoder-prompt-projection given without --encoder-prompt-length"):
        tiny_model(encoder_prompt_projection=True)
    with pytest.raises(ValueError, match="--decoder-prompt-dim 8 given without --decoder-prompt-projection"):
        tiny_model(decoder_prompt_length=2, decoder_prompt_dim=8)


@pytest.mark.parametrize("options", [{}, {"bitfit": True}, {"unfreeze": True, "adapter_dim": 4}])
def test_the_audio_front_end_and_unused_head_never_train(options):
    """The STFT and mel filters are functions of the options, stored as parameters for the original's names; they
    took gradients of 1e10 (the log of a power spectrum), which clipping then spread over every other parameter."""
    model = tiny_model(audio_encoder="cnn6", audio_sample_rate=16000, audio_hop_size=160, audio_window_size=512,
                       audio_fmax=8000.0, **options)
    audio = model.encoder.embed_audios
    fixed = {f"encoder.embed_audios.{name}" for name in (
        "spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight",
        "logmel_extractor.melW", "fc1.weight", "fc1.bias", "fc_audioset.weight", "fc_audioset.bias")}
    assert not fixed & trainable(model)
    assert audio.conv_block1.conv1.weight.requires_grad == (not options.get("bitfit"))
    inputs = batch()
    inputs["patch_audios"] = torch.randn(2, 16000) * 0.1
    inputs["patch_types"] = torch.tensor([2, 2])
    model.train()(**inputs)[0].logsumexp(-1).mean().backward()
    assert audio.logmel_extractor.melW.grad is None
    norms = [parameter.grad.norm() for parameter in model.parameters() if parameter.grad is not None]
    assert norms and max(norms) < 1e3
