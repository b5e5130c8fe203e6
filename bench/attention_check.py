"""Checks the fused attention kernels that ``scaled_dot_product_attention`` picks on this device against its math
kernel, for a training step of a small unival model (attention with an additive, learned bias and padding): the
logits and every parameter's gradient must agree within the precision's rounding. Prints JSON; exits 1 on a
mismatch. Part of ``bench.device_check``; on a CPU it compares torch's flash kernel for CPUs with the math one.

    python -m bench.attention_check --device cuda --dtype bf16
"""
import argparse
import contextlib
import json
import sys
from typing import Dict, List, Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# Largest relative error (max |a - b| / max |b|) allowed between the two kernels' results.
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOSS_SCALE = {"fp32": 1.0, "bf16": 1.0, "fp16": 2.0 ** 14}


def small_model(device: torch.device):
    from bench.common import dummy_dictionary
    from unival.models.unival import UnivalConfig, UnivalModel, architecture_defaults

    values = architecture_defaults("unival_tiny")
    values.update(dropout=0.0, encoder_drop_path_rate=0.0, decoder_drop_path_rate=0.0, image_encoder="resnet18")
    torch.manual_seed(0)
    model = UnivalModel.from_config(UnivalConfig(**values), dummy_dictionary(200)).to(device).train()
    with torch.no_grad():  # learned relative-position tables start at zero: give the bias something to carry
        for part in (model.encoder, model.decoder):
            for name in ("token_rel_pos_table_list", "image_rel_pos_table_list"):
                for table in getattr(part, name, []):
                    table.weight.normal_(0, 0.5)
    return model


def inputs(device: torch.device) -> Dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, 200, (3, 12), generator=generator)
    tokens[0, :4] = 1  # left padding in one sample: -inf bias on its padded keys
    return {"src_tokens": tokens.to(device), "src_lengths": torch.tensor([8, 12, 12], device=device),
            "prev_output_tokens": torch.randint(4, 200, (3, 9), generator=generator).to(device),
            "patch_images": torch.randn(3, 3, 128, 128, generator=generator).to(device),
            "patch_masks": torch.ones(3, dtype=torch.bool, device=device)}


def step(model, batch: Dict[str, torch.Tensor], device: torch.device, dtype: str, math_only: bool):
    """Logits and gradients of one step, attention by the kernels torch picks or by its math kernel only."""
    model.zero_grad(set_to_none=True)
    kernels = sdpa_kernel([SDPBackend.MATH]) if math_only else contextlib.nullcontext()
    with kernels, torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "fp32"):
        logits, _ = model(**batch)
    # float16 training scales its loss (fairseq's --fp16 and --amp do). Unscaled, 99.9% of this loss's gradients
    # of the attention bias lie below float16's smallest normal number (median 2.2e-7): the kernels would be
    # compared on underflow. Scaled by 2^14, 1% do, and the largest gradient is far from float16's maximum.
    scale = LOSS_SCALE[dtype]
    (logits.float().logsumexp(-1).mean() * scale).backward()
    grads = {name: p.grad.detach().float() / scale for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach().float(), grads


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.abs().max().item()
    return (value - reference).abs().max().item() / scale if scale else (value - reference).abs().max().item()


def is_key_bias(name: str) -> bool:
    """The bias of a projection to keys (attention's ``k_proj``, the absolute positions' ``pos_k_linear``) adds the
    same q.b to all of a query's logits, which softmax ignores: its exact gradient is zero, and either kernel's is
    rounding noise, which a relative error would only compare with itself."""
    return name.endswith(("k_proj.bias", "pos_k_linear.bias"))


def compare(device: torch.device, dtype: str) -> Dict:
    model = small_model(device)
    batch = inputs(device)
    fused_logits, fused_grads = step(model, batch, device, dtype, math_only=False)
    math_logits, math_grads = step(model, batch, device, dtype, math_only=True)
    errors = {name: relative_error(fused_grads[name], math_grads[name]) for name in math_grads
              if not is_key_bias(name)}
    worst = max(errors, key=errors.get)
    beyond = sorted((name for name, error in errors.items() if error > TOLERANCE[dtype]), key=errors.get,
                    reverse=True)
    largest = max(grad.abs().max().item() for grad in math_grads.values())
    key_bias = max((grads[name].abs().max().item() for grads in (fused_grads, math_grads) for name in grads
                    if is_key_bias(name)), default=0.0)
    result = {"device": str(device), "dtype": dtype, "tolerance": TOLERANCE[dtype],
              "logits_error": relative_error(fused_logits, math_logits), "worst_gradient": worst,
              "worst_gradient_error": errors[worst],
              # shown, not judged: how far from zero the key biases' gradients are, against the largest gradient
              "key_bias_gradient": key_bias / largest if largest else key_bias,
              "bias_gradient_error": max(error for name, error in errors.items() if "rel_pos_table" in name),
              "same_parameters": sorted(fused_grads) == sorted(math_grads),
              "beyond_tolerance": {name: errors[name] for name in beyond[:8]}}
    result["ok"] = (result["same_parameters"] and result["logits_error"] <= TOLERANCE[dtype]
                    and result["worst_gradient_error"] <= TOLERANCE[dtype])
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--dtype", default="fp32", choices=sorted(TOLERANCE))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.attention_check: --device cuda, but torch sees no CUDA device")
    if args.device == "cpu" and args.dtype == "fp16":
        raise SystemExit("bench.attention_check: --dtype fp16 needs --device cuda")
    result = compare(torch.device(args.device), args.dtype)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
