"""The machine's measured peak matmul rate, in GFLOP/s, per dtype and thread count: the hardware's floor.

A training step cannot go faster than its matrix multiplies at the best rate this CPU reaches on them.
This times `torch.mm` on square matrices of several sizes (and, with `--model`, on the shapes of the
model's linear layers) in fp32 and bf16, with 1 and 2 torch threads, and reports the best rate of each.
Each figure is the median of `--repeats` timings of a loop that runs for about `--seconds`. Run it on an
idle machine: on a shared one it measures what the other jobs left, and it says the load.

With `--model` it also gives the model's training FLOPs per real token (scripts/bench_common.py) at
sequences of `--length` tokens, and the floor each peak sets: the most tokens per second that training
could reach if every FLOP ran at the peak rate. A training row's share of the hardware is its real
tokens per second divided by that floor.

    python scripts/bench_matmul.py                            # fp32 and bf16, 1 and 2 threads
    python scripts/bench_matmul.py --threads 1 --dtypes bf16 --sizes 1024,2048
    python scripts/bench_matmul.py --model "$MINILM" --length 53 --tokens 1700   # MRPC pairs, batch 32
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import load_average, training_flops_per_token  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="fp32,bf16", help=f"comma list of {list(DTYPES)}")
    parser.add_argument("--threads", default="1,2", help="comma list of torch intra-op thread counts")
    parser.add_argument("--sizes", default="512,1024,2048,4096", help="square matrix sizes n (n x n @ n x n)")
    parser.add_argument("--model", help="a sequence-classification model folder: its shapes, FLOPs and floor")
    parser.add_argument("--causal", action="store_true", help="--model is a causal LM (causal attention)")
    parser.add_argument("--tokens", type=int, default=2048, help="rows of the activations for --model shapes")
    parser.add_argument("--length", type=int, default=128, help="real tokens per sequence for --model FLOPs")
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


def load_model(folder: str, causal: bool) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return (AutoModelForCausalLM if causal else AutoModelForSequenceClassification).from_pretrained(folder)


def model_shapes(model: torch.nn.Module, tokens: int) -> list[tuple[int, int, int]]:
    """The distinct (tokens, in, out) shapes of the model's linear layers: what a training step multiplies."""
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
    model = load_model(args.model, args.causal) if args.model else None
    if model is not None:
        shapes += model_shapes(model, args.tokens)
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
    flops = training_flops_per_token(model, [args.length], args.causal) if model is not None else None
    if flops is not None:
        print(f"training FLOPs per real token at {args.length} tokens: {flops / 1e6:.2f} MFLOP\n")
    floor = " | floor tokens/s |" if flops else " |"
    print("| dtype | threads | peak GFLOP/s | per thread | at shape" + floor)
    print("|---|---|---|---|---|" + ("---|" if flops else ""))
    for dtype in dtypes:
        for count in threads:
            best = max((r for r in rows if r["dtype"] == dtype and r["threads"] == count), key=lambda r: r["gflops"])
            shape = "x".join(map(str, best["shape"]))
            cells = [dtype, str(count), f"{best['gflops']:.1f}", f"{best['gflops'] / count:.1f}", shape]
            if flops:
                cells.append(f"{best['gflops'] * 1e9 / flops:.0f}")
            print("| " + " | ".join(cells) + " |")
    if args.json:
        summary = {"load": load_average(), "training_flops_per_token": flops, "rows": rows}
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
