"""Split a nested SQuAD JSON file by article, for training on some articles and evaluating on the others.

    python scripts/squad_split_by_article.py ../shared/data/squad/dev-v2.0-first5.json /tmp/squad-split \
        --train-articles 3

writes, in the output folder, nested SQuAD JSON files that hftrain's question answering reads directly:
`train.json` (the answerable questions of the first N articles), `eval_answerable.json` (the answerable
questions of the other articles, for v1-mode evaluation) and `eval_all.json` (all their questions, for
SQuAD 2.0-mode evaluation). Splitting by article keeps the contexts of training and evaluation apart.
"""

import argparse
import json
from pathlib import Path


def keep_questions(articles: list[dict], answerable_only: bool) -> list[dict]:
    """The articles with only the answerable questions (or all of them), dropping emptied paragraphs."""
    kept = []
    for article in articles:
        paragraphs = []
        for paragraph in article["paragraphs"]:
            qas = [qa for qa in paragraph["qas"] if not (answerable_only and qa.get("is_impossible"))]
            if qas:
                paragraphs.append({**paragraph, "qas": qas})
        kept.append({**article, "paragraphs": paragraphs})
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("squad_json", type=Path, help="nested SQuAD JSON file (data/paragraphs/qas)")
    parser.add_argument("output_dir", type=Path, help="folder for train.json, eval_answerable.json, eval_all.json")
    parser.add_argument("--train-articles", type=int, default=3, help="how many leading articles to train on")
    args = parser.parse_args()
    squad = json.loads(args.squad_json.read_text(encoding="utf-8"))
    train, held_out = squad["data"][: args.train_articles], squad["data"][args.train_articles :]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    splits = {
        "train.json": keep_questions(train, answerable_only=True),
        "eval_answerable.json": keep_questions(held_out, answerable_only=True),
        "eval_all.json": keep_questions(held_out, answerable_only=False),
    }
    for name, articles in splits.items():
        path = args.output_dir / name
        path.write_text(json.dumps({"version": squad.get("version", ""), "data": articles}), encoding="utf-8")
        questions = sum(len(p["qas"]) for a in articles for p in a["paragraphs"])
        print(f"{path}: {len(articles)} articles, {questions} questions")


if __name__ == "__main__":
    main()
