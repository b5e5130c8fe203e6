"""Unit tests of the unival model: shapes, masks, incremental decoding and gradients, at tiny sizes."""
import pytest
import torch
from fairseq.data import Dictionary

from unival.models.position import grid_position_ids, image_relative_buckets, token_relative_buckets
from unival.models.unival import UnivalConfig, UnivalModel, architecture_defaults


def tiny_dictionary(size=60):
    dictionary = Dictionary()
    for index in range(size - len(dictionary)):
        dictionary.add_symbol(f"w{index}")
    return dictionary


def tiny_model(dictionary_size=60, **overrides):
    values = architecture_defaults("unival_tiny")
    values.update(encoder_embed_dim=64, decoder_embed_dim=64, encoder_ffn_embed_dim=128, decoder_ffn_embed_dim=128,
                  dropout=0.0, encoder_drop_path_rate=0.0, decoder_drop_path_rate=0.0, image_bucket_size=8)
    values.update(overrides)
    torch.manual_seed(0)
    return UnivalModel.from_config(UnivalConfig(**values), tiny_dictionary(dictionary_size)).eval()


def batch(size=2, text=5, target=4, image=64):
    torch.manual_seed(1)
    return {
        "src_tokens": torch.randint(4, 60, (size, text)),
        "src_lengths": torch.full((size,), text),
        "prev_output_tokens": torch.cat([torch.zeros(size, 1, dtype=torch.long),
                                         torch.randint(4, 60, (size, target - 1))], dim=1),
        "patch_images": torch.randn(size, 3, image, image),
        "patch_masks": torch.ones(size, dtype=torch.bool),
    }


def test_forward_shapes_and_encoder_layout():
    model = tiny_model()
    inputs = batch()
    with torch.no_grad():
        logits, extra = model(**inputs)
        encoded = model.encoder(**{k: v for k, v in inputs.items() if k != "prev_output_tokens"})
    assert logits.shape == (2, 4, 60)
    assert torch.isfinite(logits).all()
    # resnet18 stages 1-3 have stride 16: a 64 px image gives a 4x4 grid, placed before the 5 text tokens
    assert encoded["encoder_out"][0].shape == (16 + 5, 2, 64)
    assert encoded["encoder_padding_mask"][0].shape == (2, 21)
    assert len(extra["inner_states"]) == 3


def test_text_padding_does_not_change_the_result():
    model = tiny_model()
    inputs = batch(size=1)
    padded = dict(inputs, src_tokens=torch.cat([inputs["src_tokens"], torch.ones(1, 3, dtype=torch.long)], dim=1))
    with torch.no_grad():
        plain, _ = model(**inputs)
        with_padding, _ = model(**padded)
    assert torch.allclose(plain, with_padding, atol=1e-5)


def test_masked_image_is_ignored():
    model = tiny_model()
    inputs = batch()
    inputs["patch_masks"] = torch.tensor([True, False])
    other = dict(inputs, patch_images=torch.randn_like(inputs["patch_images"]))
    with torch.no_grad():
        first, _ = model(**inputs)
        second, _ = model(**other)
    assert torch.allclose(first[1], second[1], atol=1e-5), "sample without image must not see its pixels"
    assert not torch.allclose(first[0], second[0], atol=1e-3), "sample with image must depend on it"


def test_decoder_is_causal():
    model = tiny_model()
    inputs = batch(target=6)
    changed = inputs["prev_output_tokens"].clone()
    changed[:, 4:] = 7
    with torch.no_grad():
        first, _ = model(**inputs)
        second, _ = model(**dict(inputs, prev_output_tokens=changed))
    assert torch.allclose(first[:, :4], second[:, :4], atol=1e-5)


def test_incremental_decoding_equals_full_decoding():
    model = tiny_model()
    inputs = batch(target=7)
    tokens = inputs.pop("prev_output_tokens")
    with torch.no_grad():
        encoded = model.encoder(**inputs)
        full, _ = model.decoder(tokens, encoded)
        state = {}
        steps = [model.decoder(tokens[:, :t], encoded, incremental_state=state)[0][:, -1] for t in range(1, 8)]
    assert torch.allclose(torch.stack(steps, dim=1), full, atol=1e-5)


def test_incremental_state_follows_beam_reordering():
    model = tiny_model()
    inputs = batch(target=3)
    tokens = inputs.pop("prev_output_tokens")
    order = torch.tensor([1, 0])
    with torch.no_grad():
        encoded = model.encoder(**inputs)
        state = {}
        for length in (1, 2):
            model.decoder(tokens[:, :length], encoded, incremental_state=state)
        model.decoder.reorder_incremental_state_scripting(state, order)
        reordered = model.encoder.reorder_encoder_out(encoded, order)
        step, _ = model.decoder(tokens[order, :3], reordered, incremental_state=state)
        full, _ = model.decoder(tokens[order, :3], reordered)
    assert torch.allclose(step[:, -1], full[:, -1], atol=1e-5)


def test_gradient_reaches_every_trainable_parameter():
    model = tiny_model(dropout=0.1).train()
    logits, _ = model(**batch())
    logits.logsumexp(-1).sum().backward()
    # relative-position tables start at zero but still receive gradients
    without_grad = [name for name, p in model.named_parameters() if p.requires_grad and
                    (p.grad is None or p.grad.abs().sum() == 0)]
    assert without_grad == []


def test_embeddings_are_shared():
    model = tiny_model()
    assert model.encoder.embed_tokens.weight is model.decoder.embed_tokens.weight
    assert model.decoder.output_projection.weight is model.encoder.embed_tokens.weight


def test_position_grid_must_fit_bucket_grid():
    assert grid_position_ids(2, 3, 4).tolist() == [1, 2, 3, 5, 6, 7]
    with pytest.raises(ValueError, match="image-bucket-size"):
        grid_position_ids(5, 5, 4)


def test_relative_buckets():
    buckets = token_relative_buckets(bucket_size=8, max_position=64)
    # distances shorter than half the bucket size keep their own bucket: i - j + bucket_size - 1
    assert buckets[10, 8] == 2 + 7 and buckets[8, 10] == -2 + 7
    assert buckets.min() >= 0 and buckets.max() < 2 * 8 - 1
    image = image_relative_buckets(3)
    assert image.shape == (10, 10)
    assert image[1, 1] == image[5, 5]  # same (0, 0) offset
    assert image[0, 0] == (2 * 3 - 1) ** 2 + 2


@pytest.mark.parametrize("name,low,high", [("unival_tiny", 10e6, 40e6), ("unival_base", 150e6, 300e6)])
def test_architecture_sizes(name, low, high):
    dictionary = tiny_dictionary(59457)
    model = UnivalModel.from_config(UnivalConfig(**architecture_defaults(name)), dictionary)
    count = sum(p.numel() for p in model.parameters())
    assert low < count < high, f"{name}: {count / 1e6:.1f}M parameters"


def test_mixed_batch_uses_each_samples_own_media():
    """Image, audio and video samples in one batch: each sample's output is what it gets alone (the original
    silently replaced video and audio features by image ones in a mixed batch)."""
    model = tiny_model(video_encoder="r3d_18", audio_encoder="cnn6", audio_sample_rate=16000, audio_hop_size=160,
                       audio_window_size=512, audio_fmax=8000.0)
    torch.manual_seed(2)
    size = 3
    inputs = batch(size=size)
    inputs["patch_images"] = torch.randn(size, 3, 64, 64)
    inputs["patch_audios"] = torch.randn(size, 16000) * 0.1
    inputs["patch_videos"] = torch.randn(size, 3, 4, 32, 32)
    inputs["patch_types"] = torch.tensor([0, 2, 1])
    with torch.no_grad():
        mixed, _ = model(**inputs)
        for row, key in enumerate(("patch_images", "patch_audios", "patch_videos")):
            alone = {name: value[row:row + 1] for name, value in inputs.items()
                     if name not in ("patch_images", "patch_audios", "patch_videos")}
            alone[key] = inputs[key][row:row + 1]
            single, _ = model(**alone)
            assert torch.allclose(mixed[row], single[0], atol=1e-4), key
        other = dict(inputs, patch_audios=torch.randn(size, 16000) * 0.1)
        changed, _ = model(**other)
    assert not torch.allclose(changed[1], mixed[1], atol=1e-3), "the audio sample must read its own audio"
    assert torch.allclose(changed[0], mixed[0], atol=1e-5) and torch.allclose(changed[2], mixed[2], atol=1e-5)


def test_media_without_an_encoder_is_refused():
    model = tiny_model()
    inputs = batch()
    inputs["patch_audios"] = torch.randn(2, 16000)
    inputs["patch_types"] = torch.tensor([0, 2])
    with pytest.raises(ValueError, match="no encoder for them"):
        model(**inputs)


def test_a_checkpoint_without_audio_weights_keeps_the_models_own_audio_encoder(caplog):
    image_only = tiny_model()
    with_audio = tiny_model(audio_encoder="cnn6", audio_sample_rate=16000, audio_fmax=8000.0)
    own = {key: value.clone() for key, value in with_audio.state_dict().items() if "audio" in key}
    state = image_only.state_dict()
    with_audio.upgrade_state_dict_named(state, "")
    with_audio.load_state_dict(state, strict=True)
    assert all(torch.equal(with_audio.state_dict()[key], value) for key, value in own.items())
    assert torch.equal(with_audio.state_dict()["encoder.embed_tokens.weight"], state["encoder.embed_tokens.weight"])
    assert "no embed_audios weights" in caplog.text
    partial = {key: value for key, value in with_audio.state_dict().items() if key != "encoder.audio_proj.bias"}
    with_audio.upgrade_state_dict_named(partial, "")
    with pytest.raises(RuntimeError, match="audio_proj.bias"):
        with_audio.load_state_dict(partial, strict=True)


def test_a_model_without_an_audio_encoder_leaves_a_checkpoints_audio_weights_out(caplog):
    """An image task finetuned from a model pretrained with audio (curriculum stage 3): the rest loads strictly."""
    image_only = tiny_model()
    with_audio = tiny_model(audio_encoder="cnn6", audio_sample_rate=16000, audio_fmax=8000.0)
    state = {key: value + 1 if value.is_floating_point() else value for key, value in with_audio.state_dict().items()}
    audio_keys = [key for key in state if ".embed_audios." in key or ".audio_proj." in key
                  or ".embed_audio_positions." in key]
    image_only.upgrade_state_dict_named(state, "")
    assert audio_keys and not any(key in state for key in audio_keys)
    image_only.load_state_dict(state, strict=True)
    assert torch.equal(image_only.state_dict()["encoder.embed_tokens.weight"],
                       with_audio.state_dict()["encoder.embed_tokens.weight"] + 1)
    assert "has embed_audios weights but this model has no such encoder" in caplog.text


def test_bfloat16_autocast_runs_every_modality_and_stays_close_to_float32():
    """What ``--autocast-bf16`` runs: image, video and audio encoders and the transformer in bfloat16 autocast
    give finite float32 gradients and logits within bfloat16 rounding of the float32 ones."""
    model = tiny_model(video_encoder="r3d_18", audio_encoder="cnn6", audio_sample_rate=16000, audio_hop_size=160,
                       audio_window_size=512, audio_fmax=8000.0)
    torch.manual_seed(2)
    inputs = batch(size=3)
    inputs["patch_audios"] = torch.randn(3, 16000) * 0.1
    inputs["patch_videos"] = torch.randn(3, 3, 4, 32, 32)
    inputs["patch_types"] = torch.tensor([0, 2, 1])
    with torch.no_grad():
        reference, _ = model(**inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(**inputs)
    assert logits.dtype == torch.bfloat16
    logits = logits.float()
    assert (logits - reference).abs().max() < 0.05 * reference.abs().max()
    assert not torch.equal(logits, reference)
    logits.logsumexp(-1).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert any("embed_videos" in name for name in grads) and any("embed_audios" in name for name in grads)
    assert all(grad.dtype == torch.float32 and torch.isfinite(grad).all() for grad in grads.values())


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 0.01), (torch.bfloat16, 0.05)])
@pytest.mark.parametrize("patch_types", [[0, 2, 1], [0, 0, 0]], ids=["mixed", "images"])
def test_a_model_cast_to_half_precision_takes_float32_media(dtype, tolerance, patch_types):
    """What fairseq-generate --fp16 and ``unival evaluate --fp16/--bf16`` run: the model cast to float16 or
    bfloat16 is given float32 pixels, frames and waveforms, as the datasets make them."""
    options = dict(video_encoder="r3d_18", audio_encoder="cnn6", audio_sample_rate=16000, audio_hop_size=160,
                   audio_window_size=512, audio_fmax=8000.0)
    torch.manual_seed(2)
    inputs = batch(size=3)
    if patch_types != [0, 0, 0]:
        inputs["patch_audios"] = torch.randn(3, 16000) * 0.1
        inputs["patch_videos"] = torch.randn(3, 3, 4, 32, 32)
    inputs["patch_types"] = torch.tensor(patch_types)
    with torch.no_grad():
        reference, _ = tiny_model(**options)(**inputs)
        logits, _ = tiny_model(**options).to(dtype)(**inputs)
    assert logits.dtype == dtype and all(value.dtype == torch.float32 for value in inputs.values()
                                         if value.is_floating_point())
    assert (logits.float() - reference).abs().max() < tolerance * reference.abs().max()


def test_a_checkpoint_of_another_vocabulary_is_refused_with_the_reason():
    trained, model = tiny_model(), tiny_model(dictionary_size=70)
    state = trained.state_dict()
    with pytest.raises(ValueError, match="vocabulary has 60 symbols but this task's has 70: pass the --dict-file"):
        model.upgrade_state_dict_named(state, "")
    same = tiny_model()
    same.upgrade_state_dict_named(state, "")  # the same vocabulary loads
    same.load_state_dict(state)


def test_a_checkpoint_of_another_vocabulary_of_the_same_size_is_refused():
    """fairseq-train's --restore-file and --finetune-from-model read no task state: a model trained with another
    vocabulary of the same size loaded silently, its token rows standing for other words."""
    from fairseq.data import Dictionary

    from unival.data_utils.vocab import VOCABULARY_FINGERPRINT, vocabulary_fingerprint

    def model_of(words):
        dictionary = Dictionary()
        for word in words:
            dictionary.add_symbol(word)
        torch.manual_seed(0)
        return UnivalModel.from_config(UnivalConfig(**architecture_defaults("unival_tiny")), dictionary)

    words = [f"w{index}" for index in range(56)]
    trained = model_of(words)
    assert int(trained.get_buffer(VOCABULARY_FINGERPRINT)) == vocabulary_fingerprint(trained.encoder.dictionary.symbols)
    assert 0 < vocabulary_fingerprint(trained.encoder.dictionary.symbols) < 2 ** 48
    state = trained.state_dict()
    assert VOCABULARY_FINGERPRINT in state
    swapped = model_of(words[1:2] + words[:1] + words[2:])
    with pytest.raises(ValueError, match=r"trained with another vocabulary of the same size \(60 symbols"):
        swapped.load_state_dict(dict(state))
    renamed = model_of(words[:-1] + ["other"])
    with pytest.raises(ValueError, match=r"Give the vocabulary it was trained with \(--dict-file; `dictionary=`"):
        renamed.load_state_dict(dict(state))
    same = model_of(words)
    same.load_state_dict(dict(state))
    # weights without a fingerprint (the original's, or saved before it) load and take the model's own
    del state[VOCABULARY_FINGERPRINT]
    swapped.load_state_dict(state)
    assert int(swapped.get_buffer(VOCABULARY_FINGERPRINT)) == vocabulary_fingerprint(swapped.encoder.dictionary.symbols)
    # a float16 or bfloat16 model keeps its fingerprint whole
    assert same.half().get_buffer(VOCABULARY_FINGERPRINT).dtype == torch.int64
    # a model built without its vocabulary (placeholder symbols) has the unknown one, compared with nothing
    from unival.checkpoint import placeholder_dictionary
    from unival.data_utils.vocab import UNKNOWN_FINGERPRINT
    placeholder = UnivalModel.from_config(UnivalConfig(**architecture_defaults("unival_tiny")),
                                          placeholder_dictionary(60))
    assert int(placeholder.get_buffer(VOCABULARY_FINGERPRINT)) == UNKNOWN_FINGERPRINT
    placeholder.load_state_dict(trained.state_dict())  # takes the weights' fingerprint
    assert int(placeholder.get_buffer(VOCABULARY_FINGERPRINT)) == int(trained.get_buffer(VOCABULARY_FINGERPRINT))
    unknown = dict(trained.state_dict(), **{VOCABULARY_FINGERPRINT: torch.tensor(UNKNOWN_FINGERPRINT)})
    swapped.load_state_dict(unknown)  # weights of an unknown vocabulary take the model's
    assert int(swapped.get_buffer(VOCABULARY_FINGERPRINT)) == vocabulary_fingerprint(swapped.encoder.dictionary.symbols)


def test_video_and_audio_encoder_paths_load_their_weights_and_a_path_needs_its_encoder(tmp_path):
    """--video-encoder-path and --audio-encoder-path were accepted and never read: the encoders kept random
    weights (the curriculum's new encoders and the audio finetuning configs rely on them)."""
    import torchvision.models.video as tv_video
    from safetensors.torch import save_file

    from unival.models.audio_encoders import PannBackbone

    torch.manual_seed(3)
    video_state = tv_video.r3d_18(weights=None).state_dict()
    save_file({key: value.contiguous() for key, value in video_state.items()}, str(tmp_path / "r3d_18.safetensors"))
    audio = PannBackbone("cnn6", sample_rate=16000, window_size=512, hop_size=160, fmax=8000.0)
    with torch.no_grad():
        for value in audio.state_dict().values():
            if value.is_floating_point():
                value.add_(0.5)
    torch.save({"model": audio.state_dict()}, tmp_path / "Cnn6.pth")
    options = dict(video_encoder="r3d_18", audio_encoder="cnn6", audio_sample_rate=16000, audio_window_size=512,
                   audio_hop_size=160, audio_fmax=8000.0)
    model = tiny_model(video_encoder_path=str(tmp_path / "r3d_18.safetensors"),
                       audio_encoder_path=str(tmp_path / "Cnn6.pth"), **options)
    videos = model.encoder.embed_videos.state_dict()
    assert torch.equal(videos["stem.0.weight"], video_state["stem.0.weight"])
    assert torch.equal(videos["layer4.1.conv2.1.running_var"], video_state["layer4.1.conv2.1.running_var"])
    audios = model.encoder.embed_audios.state_dict()
    loaded = [name for name in audio.state_dict() if not name.startswith(("spectrogram_", "logmel_"))]
    assert "conv_block1.conv1.weight" in loaded  # the front end (STFT, mel filters) stays the model's own
    for name in loaded:
        assert torch.equal(audios[name], audio.state_dict()[name]), name
    assert not torch.equal(tiny_model(**options).encoder.embed_videos.state_dict()["stem.0.weight"],
                           video_state["stem.0.weight"])
    with pytest.raises(ValueError, match="--audio-encoder-path .* given but the model has no audio encoder"):
        tiny_model(audio_encoder_path=str(tmp_path / "Cnn6.pth"))


def test_a_model_built_from_a_checkpoint_does_not_read_the_weight_files_of_its_training(tmp_path):
    """fairseq-generate --path builds the model from the checkpoint's options: files named there may be gone."""
    from omegaconf import OmegaConf

    from unival.tasks.base import forget_weight_files

    cfg = OmegaConf.create({"image_encoder_path": str(tmp_path / "gone.pth"), "video_encoder_path": None,
                            "audio_encoder_path": str(tmp_path / "gone.pth"), "arch": "unival_tiny"})
    OmegaConf.set_struct(cfg, True)
    forget_weight_files(cfg)
    assert cfg.image_encoder_path is None and cfg.audio_encoder_path is None and cfg.arch == "unival_tiny"


def test_inputs_of_the_wrong_layout_are_named_with_the_layout_expected():
    model = tiny_model()
    good = batch()
    wrong = [("src_tokens", good["src_tokens"][0],
              r"src_tokens: expected \(batch, length\) token ids, got shape \(5,\)"),
             ("src_tokens", None, r"src_tokens: expected \(batch, length\) token ids, got NoneType"),
             ("patch_images", good["patch_images"][0],
              r"patch_images: expected \(batch, 3, height, width\), got shape \(3, 64, 64\)"),
             ("patch_images", good["patch_images"][:, :1],
              r"patch_images: expected \(batch, 3, height, width\), got shape \(2, 1, 64, 64\)"),
             ("prev_output_tokens", good["prev_output_tokens"][:1],
              r"prev_output_tokens: expected \(batch, length\) token ids for the 2 samples of src_tokens, got "
              r"shape \(1, 4\)")]
    for key, value, message in wrong:
        with pytest.raises(ValueError, match=message):
            model(**{**good, key: value})
    assert model(**good)[0].shape == (2, 4, 60)
