"""Tasks of the plugin; importing this package registers them with fairseq."""
from unival.tasks import audio_caption, caption, refcoco, snli_ve, video_caption, video_vqa_gen, vqa_gen  # noqa: F401
