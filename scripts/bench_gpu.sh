#!/usr/bin/env bash
# The GPU figures of docs/performance.md, on one NVIDIA GPU. Run from the repository root with hftrain's
# dependencies importable (the repository on PYTHONPATH is enough), offline:
#
#   MINILM=<all-MiniLM-L6-v2 folder> DATA=<folder with glue/MRPC/{train,dev}.tsv, conll2003/{train,dev}.txt> \
#   OUT=<results folder> bash scripts/bench_gpu.sh [overhead|throughput|mfu|grouping|all]...
#
# overhead:   host syncs on the step path (torch's sync debug mode) and per-step time of hftrain, the HF
#             Trainer and a bare loop on a 2-layer model (bf16-mixed), where the framework decides the speed;
# throughput: MRPC/MiniLM training, hftrain against the HF Trainer, bf16-mixed and 16-mixed, 1 epoch;
# mfu:        bert-base (random weights, MiniLM's uncased vocabulary) on MRPC with hftrain, bf16-mixed: the
#             share of the GPU's bf16 peak its training FLOPs reach;
# grouping:   scripts/bench_grouping.sh on the GPU (bf16-mixed): dev metrics with and without length-grouped
#             batches, 3-epoch MRPC and 1-epoch CoNLL-2003, three seeds.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-gpu-results}
mkdir -p "$out"
minilm=${MINILM:?set MINILM to the all-MiniLM-L6-v2 folder}
data=${DATA:?set DATA to the folder with glue/MRPC and conll2003}
parts=("${@:-all}")
wants() { [[ " ${parts[*]} " == *" $1 "* || " ${parts[*]} " == *" all "* ]]; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python -c "import torch, lightning, transformers; print('torch', torch.__version__, 'lightning', \
lightning.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"

if wants overhead; then
    python -m pytest -q -p no:cacheprovider tests/test_step_syncs.py 2>&1 | tail -n 15 | tee "$out/syncs.log"
    python scripts/bench_step_overhead.py --accelerator gpu --variants bare,hf,hftrain --repeats 2 --steps 300 \
        --json "$out/overhead.json" 2>&1 | tail -n 25 | tee "$out/overhead.log"
fi

bench() {  # bench_vs_hf_trainer on MRPC with the given model, precision and variants; more flags after
    local model=$1 precision=$2 variants=$3
    shift 3
    python scripts/bench_vs_hf_trainer.py --accelerator gpu --precision "$precision" --model "$model" \
        --data-dir "$data/glue/MRPC" --variants "$variants" --threads 8 "$@"
}

if wants throughput; then
    for precision in bf16-mixed 16-mixed; do
        bench "$minilm" "$precision" hftrain,hftrain+random,hf,hf+group --epochs 1 --repeats 1 \
            --json "$out/throughput-$precision.json" 2>&1 | tail -n 12 | tee "$out/throughput-$precision.log"
    done
fi

if wants mfu; then
    bert=$(mktemp -d)/bert-base
    python - "$minilm" "$bert" <<'EOF'
import sys
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])  # MiniLM's vocabulary is bert-base-uncased's
BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), num_labels=2)).save_pretrained(sys.argv[2])
tokenizer.save_pretrained(sys.argv[2])
EOF
    bench "$bert" bf16-mixed hftrain,hf --epochs 1 --repeats 1 --json "$out/mfu.json" 2>&1 | tail -n 8 |
        tee "$out/mfu.log"
    python - "$bert" "$data/glue/MRPC/train.tsv" "$out/mfu.json" <<'EOF' | tee -a "$out/mfu.log"
import csv, json, sys
from scripts.bench_common import training_flops_per_token
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1])
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
with open(sys.argv[2], encoding="utf-8-sig") as f:
    rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
lengths = [len(tokenizer(r["#1 String"], r["#2 String"], truncation=True, max_length=128).input_ids) for r in rows]
per_token = training_flops_per_token(model, lengths)
mean_length = sum(lengths) / len(lengths)
peak = 989e12  # H100/H200 SXM dense bf16 tensor-core peak (NVIDIA's datasheet)
for run in json.load(open(sys.argv[3])):
    flops = run["samples_per_s"] * mean_length * per_token
    print(f"{run['variant']}: {run['samples_per_s']:.1f} samples/s x {mean_length:.1f} real tokens x "
          f"{per_token / 1e9:.3f} GFLOP/token = {flops / 1e12:.1f} TFLOP/s = MFU {flops / peak:.1%} of 989")
EOF
fi

if wants grouping; then
    EXTRA="--trainer.accelerator gpu --trainer.precision bf16-mixed" MINILM=$minilm DATA=$data \
        bash scripts/bench_grouping.sh "$out/grouping" 42 43 44 | tee "$out/grouping.txt"
fi
