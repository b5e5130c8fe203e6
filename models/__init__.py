"""Models of the plugin; importing this package registers them with fairseq."""
from unival.models import unival  # noqa: F401
