"""A small multiple-choice set (ARC-style: a passage, a question, 4 answers) built from SQuAD, deterministic.

    python scripts/make_choice_data.py ../shared/data/squad/dev-v2.0-first5.json /tmp/squad-choice

For every answerable question: the context is the sentence of its paragraph that holds the first gold answer,
the question is read before each choice (`question_column`), and the choices are that answer and 3 distinct
answers of other questions of the same article (so of the same kind of text), in an order drawn from the
seed. The first `--train-articles` articles are written to `train.jsonl`, the others to `validation.jsonl`,
so no passage is in both. The same file and seed always give the same rows.
"""

import argparse
import json
import random
import re
from pathlib import Path


def sentence_with(context: str, start: int) -> str:
    """The sentence of `context` (split after `.`, `?` or `!` and a space) that holds the character `start`."""
    offset = 0
    for sentence in re.split(r"(?<=[.?!])\s+", context):
        offset = context.index(sentence, offset)
        if offset <= start < offset + len(sentence):
            return sentence
        offset += len(sentence)
    return context


def article_rows(article: dict, rng: random.Random, choices: int) -> list[dict]:
    questions = [
        (paragraph["context"], qa)
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
        if not qa.get("is_impossible") and qa["answers"]
    ]
    answers = sorted({qa["answers"][0]["text"].strip() for _, qa in questions})
    rows = []
    for context, qa in questions:
        gold = qa["answers"][0]
        others = [a for a in answers if a.lower() != gold["text"].strip().lower()]
        options = [gold["text"].strip(), *rng.sample(others, choices - 1)]
        rng.shuffle(options)
        rows.append(
            {
                "id": qa["id"],
                "context": sentence_with(context, gold["answer_start"]),
                "question": qa["question"].strip(),
                "choices": options,
                "label": options.index(gold["text"].strip()),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("squad", type=Path, help="a nested SQuAD JSON file")
    parser.add_argument("output", type=Path, help="folder for train.jsonl and validation.jsonl")
    parser.add_argument("--train-articles", type=int, default=3)
    parser.add_argument("--choices", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    articles = json.loads(args.squad.read_text(encoding="utf-8"))["data"]
    rng = random.Random(args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", articles[: args.train_articles]), ("validation", articles[args.train_articles :])):
        rows = [row for article in part for row in article_rows(article, rng, args.choices)]
        (args.output / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        print(f"{args.output / f'{name}.jsonl'}: {len(rows)} rows")


if __name__ == "__main__":
    main()
