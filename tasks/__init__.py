"""Tasks of the plugin; importing this package registers them with fairseq."""
from unival.tasks import caption  # noqa: F401
