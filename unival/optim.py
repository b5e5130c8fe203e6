"""``--optimizer unival_adam``: fairseq's ``adam`` options run by torch's fused AdamW kernel.

fairseq's own ``adam`` updates the parameters one tensor at a time in Python unless apex is installed; this one
updates all of them in one fused pass on CPU and CUDA, with the same decoupled weight decay. The only difference
in the update is where epsilon enters (torch adds it after the bias correction of the second moment, fairseq
before), which matters in the first updates only.
"""
from dataclasses import dataclass, field
from typing import Any, List, Tuple

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II


@dataclass
class UnivalAdamConfig(FairseqDataclass):
    adam_betas: Any = field(default="(0.9, 0.999)", metadata={"help": "betas of Adam, e.g. '(0.9,0.999)'"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon of Adam"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay (as fairseq's adam)"})
    fused: bool = field(default=True, metadata={"help": "one fused kernel for all parameters (else torch's "
                                                        "multi-tensor foreach implementation)"})
    lr: List[float] = II("optimization.lr")


def parse_betas(value: Any) -> Tuple[float, float]:
    """'(0.9,0.999)' or a pair of numbers -> (0.9, 0.999), parsed rather than eval()-ed."""
    try:
        if isinstance(value, str):
            betas = tuple(float(part) for part in value.strip().strip("()[]").split(","))
        else:
            betas = tuple(float(part) for part in value)
    except (TypeError, ValueError):
        raise ValueError(f"--adam-betas must be two numbers such as '(0.9,0.999)', got {value!r}") from None
    if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
        raise ValueError(f"--adam-betas must be two numbers in [0, 1), got {value!r}")
    return betas


def first_lr(lr: Any) -> float:
    """fairseq keeps ``--lr`` as a list (one value per epoch range); the optimizer starts from the first."""
    return float(lr[0]) if hasattr(lr, "__getitem__") else float(lr)


@register_optimizer("unival_adam", dataclass=UnivalAdamConfig)
class UnivalAdam(FairseqOptimizer):
    def __init__(self, cfg: UnivalAdamConfig, params):
        super().__init__(cfg)
        settings = dict(self.optimizer_config)
        settings["fused" if cfg.fused else "foreach"] = True
        self._optimizer = torch.optim.AdamW(params, **settings)

    @property
    def optimizer_config(self):
        """What a checkpoint's optimizer state is checked against and reset with (fairseq's convention)."""
        return {"lr": first_lr(self.cfg.lr), "betas": parse_betas(self.cfg.adam_betas), "eps": self.cfg.adam_eps,
                "weight_decay": self.cfg.weight_decay}

    @property
    def supports_flat_params(self) -> bool:
        """fairseq's --fp16 may hand over all parameters as one flat float32 tensor, which AdamW handles."""
        return True
