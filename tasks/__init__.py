"""Tasks of the plugin; importing this package registers them with fairseq."""
from unival.tasks import (audio_caption, caption, refcoco, snli_ve, unify, video_caption,  # noqa: F401
                          video_vqa_gen, vqa_gen)
