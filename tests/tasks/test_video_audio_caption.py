"""video_caption and audio_caption: batches of real demo mp4/wav files, their prompts, and broken media."""
import pytest
import torch

from unival.data_utils.demo_corpus import write_demo_corpus
from unival.tasks.audio_caption import AudioCaptionConfig, AudioCaptionTask
from unival.tasks.video_caption import VideoCaptionConfig, VideoCaptionTask


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media") / "data"
    write_demo_corpus(folder, seed=4, num_videos=(6, 3, 3), num_audios=(6, 3, 3), modalities=("video", "audio"))
    return folder


def video_task(folder, **overrides):
    values = dict(data=str(folder), tsv_prefix="video_caption", num_frames=4, patch_frame_size=32,
                  train_subset="train", valid_subset="valid", seed=1, eval_cider=False)
    values.update(overrides)
    return VideoCaptionTask.setup_task(VideoCaptionConfig(**values))


def audio_task(folder, **overrides):
    values = dict(data=str(folder), tsv_prefix="audio_caption", audio_sample_rate=16000, audio_clip_seconds=1.5,
                  train_subset="train", valid_subset="valid", seed=1, eval_cider=False)
    values.update(overrides)
    return AudioCaptionTask.setup_task(AudioCaptionConfig(**values))


def first_batch(task, split, size=3):
    task.load_dataset(split)
    dataset = task.dataset(split)
    return dataset.collater([dataset[i] for i in range(size)])


def test_video_batches(corpus):
    task = video_task(corpus)
    batch = first_batch(task, "valid")
    net_input = batch["net_input"]
    assert net_input["patch_videos"].shape == (3, 3, 4, 32, 32)
    assert net_input["patch_types"].tolist() == [1, 1, 1] and "patch_images" not in net_input
    assert task.decode(net_input["src_tokens"][0]) == "what does the video describe?"
    assert all(len(refs) == 4 for refs in batch["references"])
    again = first_batch(video_task(corpus), "valid")
    assert (again["net_input"]["patch_videos"] == net_input["patch_videos"]).all(), "evaluation is deterministic"


def test_audio_batches_use_the_audio_prompt(corpus):
    task = audio_task(corpus)
    batch = first_batch(task, "train")
    net_input = batch["net_input"]
    assert net_input["patch_audios"].shape == (3, 24000)
    assert net_input["patch_types"].tolist() == [2, 2, 2]
    assert task.decode(net_input["src_tokens"][0]) == "what does the audio describe?"
    assert net_input["patch_audios"].abs().amax(dim=1).min() > 0.01
    # fairseq's --fp16 halves the float32 tensors of a batch; the waveform is float64 and stays whole
    from fairseq import utils
    halved = utils.apply_to_sample(lambda t: t.half() if t.dtype is torch.float32 else t, batch)
    assert halved["net_input"]["patch_audios"].dtype == torch.float64


def test_a_truncated_video_names_file_and_line(corpus):
    task = video_task(corpus)
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    video = corpus / dataset.reader.row(1)[4]
    data = video.read_bytes()
    try:
        video.write_bytes(data[: len(data) // 3])
        with pytest.raises(ValueError) as error:
            dataset[1]
        assert "video_caption_valid.tsv:2" in str(error.value) and video.name in str(error.value)
        skipping = video_task(corpus, skip_bad_rows=True)
        skipping.load_dataset("valid")
        batch = skipping.dataset("valid").collater([skipping.dataset("valid")[i] for i in range(3)])
        assert batch["num_skipped"] == 1 and batch["nsentences"] == 2
    finally:
        video.write_bytes(data)


def test_a_missing_audio_file_names_file_and_line(corpus):
    task = audio_task(corpus)
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    audio = corpus / dataset.reader.row(0)[4]
    moved = audio.with_suffix(".moved")
    audio.rename(moved)
    try:
        with pytest.raises(ValueError) as error:
            dataset[0]
        assert "audio_caption_valid.tsv:1" in str(error.value) and audio.name in str(error.value)
    finally:
        moved.rename(audio)


class AudioModel:
    """What adopt_model reads of a model."""

    def __init__(self, sample_rate):
        self.cfg = AudioCaptionConfig(audio_sample_rate=sample_rate)


def test_audio_task_set_up_as_fairseq_generate_does_reads_at_the_models_rate(corpus):
    """fairseq-generate and unival evaluate have no model options: the task's sample rate (training's is the model's
    --audio-sample-rate) is then unknown until the model is built or given (it failed to resolve before)."""
    import warnings

    from unival.generate import build_task

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = build_task("audio_caption", str(corpus), ["--tsv-prefix", "audio_caption", "--audio-clip-seconds",
                                                         "1.5"])
    # fairseq's use of Hydra's old API warned six times (twenty lines) at each task set up
    assert not [str(warning.message) for warning in caught if "hydra" in str(warning.message).lower()
                or warning.filename.endswith("compose.py")]
    assert task.cfg.audio_sample_rate is None
    task.load_dataset("valid")
    with pytest.raises(ValueError, match="no sample rate to read audio at"):
        task.dataset("valid")[0]
    task.adopt_model(AudioModel(8000))
    assert task.dataset("valid")[0]["patch_audio"].shape == (12000,)  # 1.5 s at the model's 8 kHz
    with pytest.raises(ValueError, match="reads audio at 16000 Hz but the model's audio encoder was built for 8000"):
        audio_task(corpus).adopt_model(AudioModel(8000))
