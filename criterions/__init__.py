"""Criterions of the plugin; importing this package registers them with fairseq."""
from unival.criterions import adjust_label_smoothed_cross_entropy  # noqa: F401
