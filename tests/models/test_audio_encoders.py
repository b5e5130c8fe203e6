"""Tests of the PANN audio encoders: log-mel against librosa, the original's parameter names, shapes, gradients,
SpecAugment, weight loading, and the tokens and position ids given to the transformer."""
import librosa
import numpy as np
import pytest
import torch

from unival.models.audio_encoders import (PannBackbone, SpecAugment, audio_position_ids, audio_tokens,
                                          build_audio_encoder, feature_size)

SMALL = dict(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000)
FRONTEND = ("spectrogram_extractor.", "logmel_extractor.")


@pytest.fixture(scope="module")
def encoders():
    torch.manual_seed(0)
    return {name: build_audio_encoder(name, **SMALL) for name in ("cnn6", "cnn10", "cnn14")}


def librosa_log_mel(signal, sample_rate, n_fft, hop, mel_bins, fmin, fmax):
    power = librosa.feature.melspectrogram(
        y=signal.astype(np.float64), sr=sample_rate, n_fft=n_fft, hop_length=hop, win_length=n_fft, window="hann",
        center=True, pad_mode="reflect", power=2.0, n_mels=mel_bins, fmin=fmin, fmax=fmax, htk=False, norm="slaney")
    return librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None)


def sine_1khz(rate=48000, seconds=0.5):
    return (0.5 * np.sin(2 * np.pi * 1000 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def chirp(rate=48000, seconds=0.5):
    return (0.3 * librosa.chirp(fmin=60, fmax=20000, sr=rate, duration=seconds)).astype(np.float32)


@pytest.mark.parametrize("signal", [sine_1khz, chirp])
def test_log_mel_matches_librosa(signal):
    # Tolerance: our STFT sums 1024 float32 products, so each bin carries a relative error of order 1e-7 *
    # sqrt(1024) of the frame's peak; 10 log10(1 + e) ~ 4.3 e dB stays far below 1e-3 dB for bands within 60 dB
    # of the maximum, while bands near the -100 dB floor (sine leakage, over 110 dB below the loudest band: float32's
    # own rounding of the STFT is about that far down) move by hundredths of a dB (0.054 dB at most here).
    encoder = PannBackbone("cnn6")  # the paper's front end: 48 kHz, window 1024, hop 480, 64 bins, 50-14000 Hz
    samples = signal()
    ours = encoder.log_mel(torch.from_numpy(samples)[None])[0, 0].numpy().T
    reference = librosa_log_mel(samples, 48000, 1024, 480, 64, 50, 14000)
    assert ours.shape == reference.shape == (64, len(samples) // 480 + 1)
    loud = reference > reference.max() - 60
    assert loud.mean() > 0.1
    np.testing.assert_allclose(ours[loud], reference[loud], atol=1e-3, rtol=0)
    np.testing.assert_allclose(ours, reference, atol=0.06, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_encoder_keeps_its_front_end_in_float32(dtype):
    """fairseq's --fp16 and `unival evaluate --fp16/--bf16` cast the whole model: the DFT and mel filters must stay
    float32, or quiet mel bins (here 60 dB below a tone) move by several dB."""
    encoder = PannBackbone("cnn6")
    samples = sine_1khz() + 5e-4 * np.random.default_rng(0).standard_normal(24000).astype(np.float32)
    waveform = torch.from_numpy(samples.astype(np.float64))[None]  # what the audio task's batches hold
    reference = encoder.log_mel(waveform)
    encoder.to(dtype)
    filters = [encoder.spectrogram_extractor.stft.conv_real.weight, encoder.spectrogram_extractor.stft.conv_imag.weight,
               encoder.logmel_extractor.melW]
    assert all(f.dtype == torch.float32 and not f.requires_grad for f in filters)
    assert encoder.conv_block1.conv1.weight.dtype == dtype and encoder.bn0.weight.dtype == dtype
    assert torch.equal(encoder.log_mel(waveform), reference)
    assert encoder(waveform).dtype == dtype
    assert all(value.dtype == torch.float32 for key, value in encoder.state_dict().items() if key.startswith(FRONTEND))


def test_the_stft_is_a_float32_product_not_a_convolution(monkeypatch):
    """On CUDA, cuDNN runs float32 convolutions in TF32 by default (float16's 10 mantissa bits: quiet mel bins moved
    by up to 6.7 dB in an emulation), which undid the float32 front end on GPUs; float32 products stay float32
    there. The STFT is the filters' convolution computed as a product of frames: the same numbers to rounding."""
    import torch.nn.functional as F

    from unival.models import audio_encoders

    torch.manual_seed(0)
    waveform = torch.randn(2, 16000) * 0.1
    spectrogram = audio_encoders.PowerSpectrogram(512, 160)
    padded = F.pad(waveform[:, None], (256, 256), mode="reflect")
    real = F.conv1d(padded, spectrogram.stft.conv_real.weight, stride=160)
    imag = F.conv1d(padded, spectrogram.stft.conv_imag.weight, stride=160)
    convolved = (real ** 2 + imag ** 2).transpose(1, 2)[:, None]

    def refuse(*args, **kwargs):
        raise AssertionError("the STFT ran a convolution")
    monkeypatch.setattr(audio_encoders.F, "conv1d", refuse)
    power = spectrogram(waveform)
    assert power.shape == convolved.shape == (2, 1, 101, 257)
    assert (power - convolved).abs().max() <= 1e-5 * convolved.abs().max()


def test_sine_energy_is_in_the_1khz_mel_band():
    encoder = PannBackbone("cnn6")
    frame = encoder.log_mel(torch.from_numpy(sine_1khz())[None])[0, 0, 20]
    centres = librosa.mel_frequencies(n_mels=66, fmin=50, fmax=14000)[1:-1]
    assert abs(centres[int(frame.argmax())] - 1000) < 100


def test_state_dict_matches_the_original_cnn6(fixtures_dir):
    path = fixtures_dir / "unival_reference" / "multimodal_state_dict_keys.txt"
    prefix = "encoder.embed_audios."
    expected = {}
    for line in path.read_text().splitlines():
        name, shape, _, kind = line.split("\t")
        if name.startswith(prefix):
            expected[name[len(prefix):]] = (shape, kind)
    assert len(expected) == 36
    encoder = PannBackbone("cnn6")  # the fixture's options are the defaults: 48 kHz, window 1024, hop 480, 64 mels
    parameters = dict(encoder.named_parameters())
    ours = {name: (str(tuple(value.shape)), "param" if name in parameters else "buffer")
            for name, value in encoder.state_dict().items()}
    assert ours == expected


def test_frontend_and_head_are_frozen_parameters():
    encoder = PannBackbone("cnn6")
    frozen = {name for name, p in encoder.named_parameters() if not p.requires_grad}
    assert frozen == {"spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight",
                      "logmel_extractor.melW", "fc1.weight", "fc1.bias", "fc_audioset.weight", "fc_audioset.bias"}


@pytest.mark.parametrize("name, channels, size", [("cnn6", 512, (6, 4)), ("cnn10", 512, (6, 4)),
                                                  ("cnn14", 2048, (3, 2))])
def test_output_shapes(encoders, name, channels, size):
    encoder = encoders[name].eval()
    waveform = torch.randn(2, 16000)  # 1 s at 16 kHz, hop 160: 101 frames
    with torch.no_grad():
        features = encoder(waveform)
    assert encoder.num_channels == channels
    assert encoder.output_size(16000) == size
    assert features.shape == (2, channels) + size
    assert torch.isfinite(features).all() and features.abs().sum() > 0


@pytest.mark.parametrize("name, hop, size", [("cnn6", 480, (62, 4)), ("cnn6", 200, (150, 4)),
                                             ("cnn10", 480, (62, 4)), ("cnn10", 200, (150, 4)),
                                             ("cnn14", 480, (31, 2)), ("cnn14", 200, (75, 2))])
def test_feature_size_of_a_ten_second_clip(name, hop, size):
    assert feature_size(name, 480000, hop) == size  # 1 + 480000 // hop frames, halved once per pooled block


def test_gradient_reaches_every_trainable_parameter(encoders):
    encoder = encoders["cnn10"].train()
    encoder.zero_grad()
    encoder(torch.randn(2, 16000)).square().mean().backward()
    for name, parameter in encoder.named_parameters():
        if name.startswith(FRONTEND):
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_gradient_reaches_cnn6_but_not_its_unused_head(encoders):
    encoder = encoders["cnn6"].train()
    encoder.zero_grad()
    encoder(torch.randn(2, 16000)).square().mean().backward()
    assert encoder.conv_block1.conv1.weight.grad.abs().sum() > 0
    assert encoder.fc1.weight.grad is None and encoder.fc_audioset.weight.grad is None


def test_spec_augment_masks_stripes_in_training_only():
    torch.manual_seed(0)
    augment = SpecAugment(time_mask_width=10, time_masks=2, freq_mask_width=4, freq_masks=2)
    x = torch.ones(64, 1, 50, 16)
    assert torch.equal(augment.eval()(x), x)
    masked = augment.train()(x)[:, 0] == 0
    zero_rows, zero_columns = masked.all(dim=2), masked.all(dim=1)
    assert torch.equal(masked, zero_rows[:, :, None] | zero_columns[:, None, :])  # only whole stripes
    assert zero_rows.sum(dim=1).max() <= 2 * 9 and zero_columns.sum(dim=1).max() <= 2 * 3
    assert zero_rows.any(dim=1).float().mean() > 0.5 and zero_columns.any(dim=1).float().mean() > 0.5


def test_encoder_is_deterministic_in_eval_and_augments_in_training():
    torch.manual_seed(0)
    encoder = PannBackbone("cnn6", dropout=0.0, **SMALL)
    plain = PannBackbone("cnn6", dropout=0.0, time_masks=0, freq_masks=0, **SMALL)
    plain.load_state_dict(encoder.state_dict())
    waveform = torch.randn(2, 8000)
    encoder.eval()
    assert torch.equal(encoder(waveform), encoder(waveform))
    encoder.train(), plain.train()
    assert torch.equal(plain(waveform), plain(waveform))
    assert not torch.equal(encoder(waveform), plain(waveform))


def randomised(encoder):
    with torch.no_grad():
        for name, value in encoder.state_dict().items():
            if value.is_floating_point() and not name.startswith(FRONTEND):
                value.copy_(torch.rand_like(value) + 0.5 if "running_var" in name else torch.randn_like(value))
    return encoder.eval()


def test_load_pann_checkpoint_layout(tmp_path):
    torch.manual_seed(0)
    source = randomised(PannBackbone("cnn6", **SMALL))
    torch.save({"model": source.state_dict(), "iteration": 1000}, tmp_path / "Cnn6.pth")
    target = PannBackbone("cnn6", weights_path=str(tmp_path / "Cnn6.pth"), **SMALL).eval()
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name
    waveform = torch.randn(1, 16000)
    assert torch.equal(target(waveform), source(waveform))


def test_classifier_of_the_file_is_ignored_without_a_head(tmp_path):
    torch.manual_seed(0)
    source = randomised(PannBackbone("cnn10", **SMALL))
    state = dict(source.state_dict(), **{"fc1.weight": torch.randn(512, 512), "fc1.bias": torch.randn(512),
                                         "fc_audioset.weight": torch.randn(527, 512),
                                         "fc_audioset.bias": torch.randn(527)})
    torch.save({"model": state}, tmp_path / "Cnn10.pth")
    target = PannBackbone("cnn10", **SMALL)
    target.load_weights(str(tmp_path / "Cnn10.pth"))
    assert torch.equal(target.conv_block4.conv2.weight, source.conv_block4.conv2.weight)
    assert not hasattr(target, "fc1")


def test_safetensors(tmp_path):
    from safetensors.torch import save_file
    source = randomised(PannBackbone("cnn6", **SMALL))
    save_file(source.state_dict(), str(tmp_path / "cnn6.safetensors"))
    target = PannBackbone("cnn6", **SMALL)
    target.load_weights(str(tmp_path / "cnn6.safetensors"))
    assert torch.equal(target.bn0.running_var, source.bn0.running_var)


def test_wrong_keys_are_listed(tmp_path):
    state = PannBackbone("cnn6", **SMALL).state_dict()
    del state["conv_block2.bn1.running_mean"]
    state["conv_block5.conv1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as error:
        PannBackbone("cnn6", **SMALL).load_weights(str(tmp_path / "bad.pth"))
    assert "bad.pth" in str(error.value)
    assert "missing ['conv_block2.bn1.running_mean']" in str(error.value)
    assert "unexpected ['conv_block5.conv1.weight']" in str(error.value)


def test_wrong_shape_names_the_file(tmp_path):
    state = PannBackbone("cnn6", **SMALL).state_dict()
    state["bn0.weight"] = torch.ones(128)
    torch.save(state, tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=r"(?s)wide\.pth.*size mismatch for bn0\.weight"):
        PannBackbone("cnn6", **SMALL).load_weights(str(tmp_path / "wide.pth"))


def test_frontend_of_the_file_is_kept_only_on_request(tmp_path):
    state = PannBackbone("cnn6", **dict(SMALL, sample_rate=22050)).state_dict()  # other mel filters
    torch.save({"model": state}, tmp_path / "other_rate.pth")
    own = PannBackbone("cnn6", **SMALL)
    expected = own.logmel_extractor.melW.clone()
    assert not torch.allclose(state["logmel_extractor.melW"], expected)
    own.load_weights(str(tmp_path / "other_rate.pth"))
    assert torch.equal(own.logmel_extractor.melW, expected)
    own.load_weights(str(tmp_path / "other_rate.pth"), keep_frontend=False)
    assert torch.equal(own.logmel_extractor.melW, state["logmel_extractor.melW"])
    assert not own.logmel_extractor.melW.requires_grad


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        PannBackbone("cnn6", **SMALL).load_weights(str(tmp_path / "absent.pth"))


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="cnn6, cnn10, cnn14"):
        build_audio_encoder("cnn12")


def test_bad_frontend_options():
    with pytest.raises(ValueError, match="fmax 30000"):
        build_audio_encoder("cnn6", sample_rate=48000, fmax=30000)
    with pytest.raises(ValueError, match="at least 32"):
        build_audio_encoder("cnn14", mel_bins=16)


def test_too_short_waveform(encoders):
    with pytest.raises(ValueError, match="too short"):
        encoders["cnn14"](torch.randn(1, 2000))


def test_tokens_are_time_major():
    features = torch.arange(2 * 3 * 4 * 2, dtype=torch.float32).reshape(2, 3, 4, 2)  # (B, C, T', F')
    tokens = audio_tokens(features)
    assert tokens.shape == (2, 8, 3)
    assert torch.equal(tokens[1, 2 * 2 + 1], features[1, :, 2, 1])


def test_position_ids_fill_a_square_grid():
    ids = audio_position_ids(62, bucket_size=16)  # CNN14, 10 s at hop 480: 31 x 2 tokens on an 8 x 8 square
    assert ids.tolist()[:10] == [1, 2, 3, 4, 5, 6, 7, 8, 17, 18]
    assert len(ids) == 62 and ids[-1] == 7 * 16 + 5 + 1
    with pytest.raises(ValueError, match="600 audio tokens need a 25x25"):
        audio_position_ids(600, bucket_size=16)
