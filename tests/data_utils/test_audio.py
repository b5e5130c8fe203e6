"""Tests of loading audio clips from TSV fields: decoding (soundfile, PyAV for AAC), resampling, mixing, cropping and
padding, and the errors."""
import av
import numpy as np
import pytest
import soundfile

from unival.data_utils.audio import crop_or_repeat_pad, decode_audio, load_audio
from unival.data_utils.media import MediaError

SOURCE = "train.tsv:7"


def sine(frequency, seconds, rate, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def write(path, samples, rate, **options):
    soundfile.write(str(path), samples, rate, **options)
    return path


def peak_frequency(samples, rate):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)]


def test_resampling_keeps_the_frequency(tmp_path):
    write(tmp_path / "tone.wav", sine(440, 1.0, 16000), 16000, subtype="PCM_16")
    clip = load_audio("tone.wav", str(tmp_path), 48000, 1.0, train=False)
    assert clip.dtype == np.float32 and clip.shape == (48000,)
    assert abs(peak_frequency(clip, 48000) - 440) <= 1.0  # FFT bins are 1 Hz wide for 1 s
    middle = clip[4800:-4800]  # away from the resampler's edges
    assert np.abs(middle).max() == pytest.approx(0.5, abs=0.01)


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = sine(440, 0.5, 16000, 0.6), sine(440, 0.5, 16000, 0.2)
    write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    clip = load_audio("stereo.wav", str(tmp_path), 16000, 0.5, train=False)
    np.testing.assert_allclose(clip, (left + right) / 2, atol=1e-7)


def test_long_file_is_cropped_from_the_start_in_evaluation(tmp_path):
    ramp = (np.arange(40000) / 40000).astype(np.float32)
    write(tmp_path / "ramp.wav", ramp, 16000, subtype="FLOAT")
    first = load_audio("ramp.wav", str(tmp_path), 16000, 1.0, train=False)
    second = load_audio("ramp.wav", str(tmp_path), 16000, 1.0, train=False, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(first, ramp[:16000])
    np.testing.assert_array_equal(second, ramp[:16000])


def test_training_crop_is_random_and_seeded(tmp_path):
    ramp = (np.arange(40000) / 40000).astype(np.float32)
    write(tmp_path / "ramp.wav", ramp, 16000, subtype="FLOAT")
    offsets = []
    for seed in (0, 0, 1, 2):
        clip = load_audio("ramp.wav", str(tmp_path), 16000, 1.0, train=True, rng=np.random.default_rng(seed))
        offset = int(np.argmin(np.abs(ramp - clip[0])))
        np.testing.assert_array_equal(clip, ramp[offset:offset + 16000])
        offsets.append(offset)
    assert offsets[0] == offsets[1] == np.random.default_rng(0).integers(0, 40000 - 16000 + 1)
    assert len(set(offsets[1:])) == 3


def test_short_file_is_repeated_whole_then_zero_padded(tmp_path):
    tone = sine(300, 0.3, 16000)
    write(tmp_path / "short.wav", tone, 16000, subtype="FLOAT")
    clip = load_audio("short.wav", str(tmp_path), 16000, 1.0, train=True, rng=np.random.default_rng(0))
    assert clip.shape == (16000,)
    np.testing.assert_array_equal(clip[:14400], np.tile(tone, 3))
    assert not clip[14400:].any()


def test_crop_or_repeat_pad_lengths():
    samples = np.arange(1, 6, dtype=np.float32)
    np.testing.assert_array_equal(crop_or_repeat_pad(samples, 12, train=False), [1, 2, 3, 4, 5] * 2 + [0, 0])
    np.testing.assert_array_equal(crop_or_repeat_pad(samples, 5, train=True), samples)
    np.testing.assert_array_equal(crop_or_repeat_pad(samples, 3, train=False), [1, 2, 3])


def test_absolute_path_ignores_data_dir(tmp_path):
    path = write(tmp_path / "tone.flac", sine(440, 0.25, 16000), 16000)
    clip = load_audio(str(path), "/nonexistent", 16000, 0.25, train=False)
    np.testing.assert_allclose(clip, sine(440, 0.25, 16000), atol=1e-4)  # 16-bit FLAC


def assert_error(tmp_path, field, *words, **options):
    with pytest.raises(MediaError) as error:
        load_audio(field, str(tmp_path), 16000, 1.0, train=False, source=SOURCE, **options)
    message = str(error.value)
    assert message.startswith(f"{SOURCE}: ")
    assert str(tmp_path / field) in message
    for word in words:
        assert word in message
    return message


def test_missing_file(tmp_path):
    assert_error(tmp_path, "absent.wav", "not found")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    assert_error(tmp_path, "empty.wav", "0 bytes")


def test_file_with_zero_samples(tmp_path):
    write(tmp_path / "nothing.wav", np.zeros(0, np.float32), 16000)
    assert_error(tmp_path, "nothing.wav", "no samples")


def test_truncated_wav(tmp_path):
    data = write(tmp_path / "full.wav", sine(440, 1.0, 16000), 16000, subtype="PCM_16").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:len(data) // 2])
    message = assert_error(tmp_path, "cut.wav", "truncated")
    assert f"{len(data) - len(data) // 2} bytes" in message


def test_truncated_flac(tmp_path):
    data = write(tmp_path / "full.flac", np.random.default_rng(0).uniform(-0.5, 0.5, 16000), 16000).read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[:len(data) // 2])
    assert_error(tmp_path, "cut.flac", "not a readable audio file")


def test_garbage_bytes_give_each_decoders_reason(tmp_path):
    (tmp_path / "noise.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    message = assert_error(tmp_path, "noise.wav", "not a readable audio file")
    assert "(soundfile: Error opening" in message
    assert message.endswith("; PyAV: Invalid data found when processing input)")


def write_aac(path, channels, rate):
    """An .m4a file of AAC-encoded ``channels`` ((channels, samples) float32), encoded by PyAV."""
    layout = {1: "mono", 2: "stereo"}[len(channels)]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(channels), format="fltp", layout=layout)
        frame.sample_rate, frame.pts = rate, 0
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            container.mux(packet)
    return path


def test_aac_in_m4a_is_decoded_with_its_rate_and_channels(tmp_path):
    left, right = sine(440, 1.0, 22050), sine(1000, 1.0, 22050, 0.3)
    samples, rate = decode_audio(str(write_aac(tmp_path / "tone.m4a", np.stack([left, right]), 22050)), SOURCE)
    assert rate == 22050 and samples.dtype == np.float32
    assert samples.shape[1] == 2 and 22050 <= samples.shape[0] <= 22050 + 2 * 1024  # AAC frames hold 1024 samples
    middle = samples[4096:4096 + 8192]
    assert [peak_frequency(middle[:, channel], 22050) for channel in (0, 1)] == pytest.approx([440, 1000], abs=3)
    assert np.abs(middle).max(axis=0) == pytest.approx([0.5, 0.3], abs=0.05)


def test_m4a_loads_at_the_models_rate(tmp_path):
    write_aac(tmp_path / "tone.m4a", sine(440, 1.0, 16000)[None], 16000)
    clip = load_audio("tone.m4a", str(tmp_path), 48000, 1.0, train=False, source=SOURCE)
    assert clip.shape == (48000,) and np.abs(clip).max() > 0.4
    assert abs(peak_frequency(clip, 48000) - 440) <= 1.0


def test_silent_file_raises_unless_allowed(tmp_path):
    write(tmp_path / "silence.wav", np.zeros((8000, 2), np.float32), 16000)
    message = assert_error(tmp_path, "silence.wav", "silent", "every sample is 0")
    assert "channels" not in message
    clip = load_audio("silence.wav", str(tmp_path), 16000, 1.0, train=False, allow_silent=True)
    assert clip.shape == (16000,) and not clip.any()


def test_stereo_whose_channels_cancel_is_silent(tmp_path):
    tone = sine(440, 0.5, 16000)
    write(tmp_path / "cancel.wav", np.stack([tone, -tone], axis=1), 16000, subtype="PCM_16")
    assert_error(tmp_path, "cancel.wav", "silent audio file (every sample is within one 16-bit step of 0, peak ",
                 ", once its 2 channels, which cancel, are mixed to mono): ")
    clip = load_audio("cancel.wav", str(tmp_path), 16000, 1.0, train=False, allow_silent=True)
    assert np.abs(clip).max() < 2 ** -15


def test_faint_mono_file_is_silent_but_one_step_is_not(tmp_path):
    write(tmp_path / "faint.wav", sine(440, 0.5, 16000, 2 ** -17), 16000, subtype="FLOAT")
    assert_error(tmp_path, "faint.wav", "(every sample is within one 16-bit step of 0, peak 7.6e-06): ")
    write(tmp_path / "step.wav", sine(440, 0.5, 16000, 2 ** -14), 16000, subtype="FLOAT")
    assert load_audio("step.wav", str(tmp_path), 16000, 0.5, train=False).any()


def test_sound_above_the_models_band_is_silent_once_resampled(tmp_path):
    faded = sine(20000, 0.5, 48000) * np.hanning(24000)  # no onset click, which holds lower frequencies
    write(tmp_path / "ultrasound.wav", faded, 48000, subtype="FLOAT")
    assert_error(tmp_path, "ultrasound.wav", ", once resampled to 16000 Hz): ")


def test_file_shorter_than_an_analysis_window_raises_unless_allowed(tmp_path):
    write(tmp_path / "blip.wav", np.full(1, 0.5, np.float32), 48000, subtype="FLOAT")
    message = assert_error(tmp_path, "blip.wav", "too short")
    assert message.endswith("holds 1 samples at 16000 Hz (0.1 ms), fewer than the 400 (25.0 ms) a clip needs")
    clip = load_audio("blip.wav", str(tmp_path), 16000, 1.0, train=False, allow_silent=True)
    assert clip.shape == (16000,)


def test_minimum_length_is_at_most_the_clip(tmp_path):
    write(tmp_path / "short.wav", sine(440, 0.01, 16000), 16000, subtype="FLOAT")  # 160 samples
    assert load_audio("short.wav", str(tmp_path), 16000, 0.01, train=False).shape == (160,)
    with pytest.raises(MediaError, match="too short"):
        load_audio("short.wav", str(tmp_path), 16000, 0.02, train=False)


def test_bad_clip_options():
    with pytest.raises(ValueError, match="positive"):
        load_audio("x.wav", None, 16000, 0.0, train=False)
