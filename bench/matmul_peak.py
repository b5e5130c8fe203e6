"""The machine's practical peak: FLOPs per second of a large square matrix product, the yardstick of each
benchmark's fraction of peak (model FLOPs / time / peak).

    python -m bench.matmul_peak --threads 2
"""
import argparse
import time
from typing import Callable, Dict, List, Optional

import torch

from bench import common
from unival.models import cpu_linear

# Big enough to reach the BLAS's steady state, small enough to take about a second on 2 CPU cores.
DEFAULT_SIZE = {"cpu": 2048, "cuda": 8192}


def measure_matmul_peak(device: torch.device, dtype: str = "fp32", size: Optional[int] = None,
                        repeats: int = 5) -> Dict[str, float]:
    """Best FLOPs/s over ``repeats`` products of two size x size matrices of ``dtype`` on ``device``.

    The best rather than the median: the peak is what the hardware can do, and a shared machine only ever
    makes a run slower. On the CPU in float32 both libraries that multiply the model's matrices are measured,
    torch's BLAS (``torch.matmul``) and oneDNN (models/cpu_linear.py), and the faster is the peak: on an AMD
    CPU with AVX-512, MKL runs AVX2 code at half of what oneDNN reaches.
    """
    size = size or DEFAULT_SIZE.get(device.type, 2048)
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(device=device, dtype=common.DTYPES[dtype])
    right = torch.randn(size, size, generator=generator).to(device=device, dtype=common.DTYPES[dtype])
    products = {"blas": lambda: torch.matmul(left, right)}
    if device.type == "cpu" and dtype == "fp32" and cpu_linear.onednn_available():
        right_rows = right.t()  # oneDNN multiplies by the transpose of its weight argument: a view, no copy
        products["onednn"] = lambda: cpu_linear.onednn_product(left, right_rows, None)
    by_library = {name: best_seconds(product, device, repeats) for name, product in products.items()}
    library = min(by_library, key=by_library.get)
    flops = 2.0 * size ** 3
    return {"size": size, "dtype": dtype, "seconds": by_library[library], "flops_per_s": flops / by_library[library],
            "library": library, "flops_per_s_by_library": {name: flops / seconds for name, seconds in by_library.items()}}


def best_seconds(product: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    product()  # warm-up: thread pool, cuBLAS handle, kernel choice
    common.synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        common.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=sorted(common.DTYPES), default="fp32", help="matrix element type")
    parser.add_argument("--size", type=int, help="matrix side (default 2048 on CPU, 8192 on CUDA)")
    parser.add_argument("--repeats", type=int, default=5, help="timed products; the fastest is reported")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    output = {"benchmark": "matmul_peak", "threads": torch.get_num_threads(), "device": str(device),
              **measure_matmul_peak(device, args.dtype, args.size, args.repeats)}
    common.print_json(output)
    return output


if __name__ == "__main__":
    main()
