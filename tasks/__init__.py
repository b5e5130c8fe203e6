"""Tasks of the plugin; importing this package registers them with fairseq."""
from unival.tasks import audio_caption, caption, video_caption  # noqa: F401
