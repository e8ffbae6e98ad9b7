"""The machine's measured peak matmul rate, in GFLOP/s, per dtype and thread count: the hardware's floor.

A training step cannot go faster than its matrix multiplies at the best rate this CPU reaches on them.
This times `torch.mm` on square matrices of several sizes (and, with `--model`, on the shapes of a
transformer's linear layers) in fp32 and bf16, with 1 and 2 torch threads, and reports the best rate
of each. Each figure is the median of `--repeats` timings of a loop that runs for about `--seconds`.
Run it on an idle machine: on a shared one it measures what the other jobs left, and it says the load.

    python scripts/bench_matmul.py                            # fp32 and bf16, 1 and 2 threads
    python scripts/bench_matmul.py --threads 1 --dtypes bf16 --sizes 1024,2048
    python scripts/bench_matmul.py --model ../shared/models/x --tokens 1700   # also the model's own shapes

The floor of a training row is then `tokens/s x training_flops_per_token / peak` (scripts/bench_common.py).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import load_average  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="fp32,bf16", help=f"comma list of {list(DTYPES)}")
    parser.add_argument("--threads", default="1,2", help="comma list of torch intra-op thread counts")
    parser.add_argument("--sizes", default="512,1024,2048,4096", help="square matrix sizes n (n x n @ n x n)")
    parser.add_argument("--model", help="also time the linear layers' shapes of this HF model folder")
    parser.add_argument("--tokens", type=int, default=2048, help="rows of the activations for --model shapes")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timing loop")
    parser.add_argument("--repeats", type=int, default=3, help="timings per shape; the median is reported")
    parser.add_argument("--json", help="also write every figure to this file")
    return parser.parse_args(argv)


def gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float, repeats: int) -> float:
    """Median GFLOP/s of `(m x k) @ (k x n)` over `repeats` loops of about `seconds` each."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    out = torch.empty(m, n, dtype=dtype)
    flops = 2.0 * m * k * n
    torch.mm(a, b, out=out)  # the first call picks and caches the kernel (oneDNN/MKL)
    start = time.perf_counter()
    torch.mm(a, b, out=out)
    calls = max(1, int(seconds / max(time.perf_counter() - start, 1e-6)))
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b, out=out)
        rates.append(flops * calls / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def model_shapes(folder: str, tokens: int) -> list[tuple[int, int, int]]:
    """The distinct (tokens, in, out) shapes of the model's linear layers: what a training step multiplies."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder)
    shapes = {
        (tokens, module.in_features, module.out_features)
        for module in model.modules()
        if isinstance(module, torch.nn.Linear)
    }
    return sorted(shapes)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    shapes = [(n, n, n) for n in map(int, args.sizes.split(","))]
    if args.model:
        shapes += model_shapes(args.model, args.tokens)
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, load before: {load_average()}")
    rows = []
    for count in threads:
        torch.set_num_threads(count)
        for dtype in dtypes:
            for m, k, n in shapes:
                rate = gflops(m, k, n, DTYPES[dtype], args.seconds, args.repeats)
                rows.append({"threads": count, "dtype": dtype, "shape": [m, k, n], "gflops": rate})
                print(f"  {count} thread(s) {dtype} {m}x{k} @ {k}x{n}: {rate:.1f} GFLOP/s", flush=True)
    print(f"load after: {load_average()}\n")
    print("| dtype | threads | peak GFLOP/s | per thread | at shape |")
    print("|---|---|---|---|---|")
    for dtype in dtypes:
        for count in threads:
            best = max((r for r in rows if r["dtype"] == dtype and r["threads"] == count), key=lambda r: r["gflops"])
            shape = "x".join(map(str, best["shape"]))
            print(f"| {dtype} | {count} | {best['gflops']:.1f} | {best['gflops'] / count:.1f} | {shape} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"load": load_average(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
