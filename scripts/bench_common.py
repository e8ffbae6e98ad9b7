"""What the benchmark scripts share: fresh-process runs taken in turns, their tables, the model's training
FLOPs per real token, and the machine's load.

`run_child` starts every measured run in a new Python process and `alternate` orders the runs so that the
variants take turns: on a machine shared with other jobs, drift in the load then falls on every variant.

`training_flops` is the arithmetic a training step cannot avoid: forward + backward of every matrix
multiply on the real (non-pad) tokens. Multiplied by the measured peak matmul rate (`bench_matmul.py`) it
gives the machine's floor for a training row, so a row can be reported as a share of the hardware.
"""

import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

# sequence-classification heads of encoders, which run on the first token's vector only (GPT-2's `score`
# runs on every token and is left out on purpose)
SEQUENCE_HEADS = ("classifier", "pre_classifier")


def matmul_params(model: torch.nn.Module) -> tuple[int, int]:
    """Weights that take part in a matrix multiply: (applied to every token, applied once per sequence).

    Counted from the modules (`nn.Linear`, and transformers' `Conv1D` of GPT-2), so a tied output layer
    counts and embedding lookups (no multiply) do not.
    """
    per_token = per_sequence = 0
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        is_matmul = isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
        if not is_matmul or weight is None:
            continue
        if _pooled(name, model):
            per_sequence += weight.numel()
        else:
            per_token += weight.numel()
    return per_token, per_sequence


def _pooled(name: str, model: torch.nn.Module) -> bool:
    """Whether the module `name` runs once per sequence: the pooler and an encoder's classification head."""
    parts = name.split(".")
    if "pooler" in parts:
        return True
    return type(model).__name__.endswith("ForSequenceClassification") and parts[0] in SEQUENCE_HEADS


def attention_shape(config) -> tuple[int, int]:
    """(layers with self-attention, width of the attention's queries = heads x head size) of a HF config."""
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or config.hidden_size // heads
    return layers, heads * head_dim


def training_flops(model: torch.nn.Module, lengths: Sequence[int], causal: bool = False) -> float:
    """FLOPs of one training step (forward + backward = 3x forward) over sequences of these real lengths.

    Per token: 2 FLOPs per multiply-add of each matmul weight forward, hence 6 x weights for training.
    Attention adds, per layer and sequence of length L, scores QK^T and the weighted sum AV: 2 x 2 x L^2 x
    width forward (half the pairs with a causal mask), x3 for training. Pad tokens are left out: this is
    the work the step needs, not the work a padded batch does. Encoder-only and decoder-only models; an
    encoder-decoder model needs its two lengths and is not covered.
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    per_token, per_sequence = matmul_params(model)
    layers, width = attention_shape(model.config)
    pairs = lengths * (lengths + 1) / 2 if causal else lengths**2
    matmuls = 6 * (per_token * lengths.sum() + per_sequence * len(lengths))
    attention = 12 * layers * width * pairs.sum()
    return float(matmuls + attention)


def _reads_source(name: str) -> bool:
    """Whether the linear layer `name` of an encoder-decoder runs on source tokens: the encoder's layers, and
    the keys and values of cross-attention, which project the encoder's output in every decoder layer."""
    parts = name.split(".")
    cross = parts[-2:] in (["EncDecAttention", "k"], ["EncDecAttention", "v"])  # T5
    cross |= parts[-2:] in (["encoder_attn", "k_proj"], ["encoder_attn", "v_proj"])  # BART, Marian
    return "encoder" in parts or cross


def seq2seq_training_flops(
    model: torch.nn.Module, source_lengths: Sequence[int], target_lengths: Sequence[int]
) -> float:
    """FLOPs of one training step of an encoder-decoder (T5, BART) over pairs of these real lengths.

    Matmul weights count 6 FLOPs per token they are applied to: the encoder's and cross-attention's keys and
    values per source token, every other decoder weight (the output layer included) per target token.
    Attention, per layer and pair, 12 x width FLOPs per query-key pair: L_s^2 in the encoder, L_t (L_t + 1) / 2
    in the decoder's causal self-attention, L_t x L_s in cross-attention.
    """
    source = np.asarray(source_lengths, dtype=np.float64)
    target = np.asarray(target_lengths, dtype=np.float64)
    per_source = per_target = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if _reads_source(name):
                per_source += module.weight.numel()
            else:
                per_target += module.weight.numel()
    config = model.config
    encoder_layers = getattr(config, "encoder_layers", None) or config.num_layers
    decoder_layers = getattr(config, "decoder_layers", None) or config.num_decoder_layers
    _, width = attention_shape(config)
    pairs = encoder_layers * (source**2).sum()
    pairs += decoder_layers * (target * (target + 1) / 2 + target * source).sum()
    return float(6 * (per_source * source.sum() + per_target * target.sum()) + 12 * width * pairs)


def training_flops_per_token(model: torch.nn.Module, lengths: Sequence[int], causal: bool = False) -> float:
    """`training_flops` per real token: the model's cost of one token at this mix of lengths."""
    return training_flops(model, lengths, causal) / float(np.sum(lengths))


def load_average() -> str:
    """The machine's 1/5/15-minute load averages: on a shared machine, the context every figure needs."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def machine_note() -> str:
    """CPUs and load averages in one line, for a table's caption."""
    return f"{os.cpu_count()} CPUs, load {load_average()} (1/5/15 min)"


def machine_record() -> dict:
    """When, where and on which code a benchmark ran, for the head of its `--json` file: a figure drawn from
    the file (`scripts/make_figures.py`) can then say its date, machine and commit."""
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").is_file()
        else platform.processor()
    )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "commit": commit.stdout.strip() or None,
    }


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (Linux reports `ru_maxrss` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- runs


def alternate(variants: Sequence[str], repeats: int) -> Iterator[tuple[int, str]]:
    """(repeat, variant) in run order: each repeat runs every variant once, starting one variant later than
    the repeat before (A B C, B C A, C A B, …), so no variant always runs first or right after another."""
    for repeat in range(repeats):
        shift = repeat % len(variants)
        for variant in [*variants[shift:], *variants[:shift]]:
            yield repeat, variant


def run_child(
    script: str | Path, argv: Sequence[str], variant: str, threads: int, timeout: float | None = None
) -> dict:
    """Run `script *argv --child variant --started T --result F` in a fresh Python process; return the JSON
    the child wrote to F, with the machine's 5-minute load average (about one run long) added as `load`.

    `T` is the launch time (`time.time()`), so the child can report its wall time from process start,
    imports included. The child imports this checkout's hftrain (`PYTHONPATH`), never reaches the Hub, and
    gets `threads` OpenMP threads. A failed child ends the benchmark with its output's tail. A child still
    running after `timeout` seconds is killed with its own children (dataloader workers), and the run is
    `{"variant": …, "timed_out": timeout}` plus whatever the child wrote to F by then: a side capped on purpose,
    reported as taking longer.
    """
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        command = [sys.executable, str(script), *argv, "--child", variant]
        command += ["--started", str(time.time()), "--result", result.name]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": str(threads),
        }
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        with subprocess.Popen(command, env=env, start_new_session=timeout is not None, **pipes) as process:
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                partial = Path(result.name).read_text()
                return {
                    **json.loads(partial or "{}"),
                    "variant": variant,
                    "timed_out": timeout,
                    "load": os.getloadavg()[1],
                }
        if process.returncode != 0:
            sys.exit(f"{variant} failed:\n{stdout[-3000:]}\n{stderr[-5000:]}")
        run = json.loads(Path(result.name).read_text())
    run["load"] = os.getloadavg()[1]
    return run


def median(runs: Sequence[dict], variant: str, key: str) -> float:
    """The median of `key` over the runs of `variant` (NaN when none of them has it)."""
    values = [run[key] for run in runs if run["variant"] == variant and run.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
