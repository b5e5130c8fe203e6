"""Criterions of the plugin; importing this package registers them with fairseq."""
from unival.criterions import adjust_label_smoothed_cross_entropy  # noqa: F401
from unival.criterions import adjust_label_smoothed_encouraging_loss  # noqa: F401
from unival.criterions import scst_reward_criterion  # noqa: F401
