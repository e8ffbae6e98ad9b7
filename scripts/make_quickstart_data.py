"""Rebuild the quickstart's review-sentiment set (configs/quickstart/{train,validation}.csv, LICENSE) from VADER's data.

The sentences are the Amazon customer-review snippets of Hutto & Gilbert (ICWSM 2014): sentences from
Hu & Liu's (2004) product reviews, each rated from -4 to +4 by about 20 people. They ship, under the MIT
licence, inside the vaderSentiment 3.3.2 source package (additional_resources/hutto_ICWSM_2014.tar.gz),
which pip can fetch from PyPI. A sentence whose mean rating is at least +0.5 is "positive", at most -0.5
"negative"; the near-neutral ones in between are left out, since their label would be a coin toss.
Validation takes whole reviews (every sentence of a review lands on one side), so no review's wording
leaks from training into the score. Deterministic: the same package gives the same files.

    pip download --no-deps --no-binary :all: -d /tmp/vader vaderSentiment==3.3.2
    python scripts/make_quickstart_data.py /tmp/vader/vaderSentiment-3.3.2.tar.gz
"""

import argparse
import csv
import io
import random
import tarfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "configs" / "quickstart"
DATA_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
LICENSE = "vaderSentiment-3.3.2/LICENSE.txt"
SNIPPETS = "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt"
MIN_STRENGTH = 0.5  # |mean rating| below this is near-neutral and dropped
VALIDATION_ROWS = 400  # whole reviews are moved to validation until it holds at least this many rows
TRAIN_ROWS = 600  # enough to learn from, few enough for a short 2-epoch run on a CPU


def read_sdist(sdist: Path) -> tuple[list[tuple[str, float, str]], str]:
    """(review id, mean rating, sentence) for every rated sentence, and the MIT licence text they ship under."""
    try:
        with tarfile.open(sdist) as outer:
            inner_bytes = outer.extractfile(DATA_ARCHIVE).read()
            licence = outer.extractfile(LICENSE).read().decode("utf-8").replace("\r\n", "\n")
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            text = inner.extractfile(SNIPPETS).read().decode("utf-8")
    except (tarfile.ReadError, KeyError) as err:
        raise SystemExit(
            f"{sdist} is not the vaderSentiment 3.3.2 source package. The wheel lacks the data: "
            "fetch the .tar.gz with the `pip download --no-binary :all:` command in this script's docstring."
        ) from err
    rows = []
    for line in text.splitlines():
        sentence_id, rating, sentence = line.split("\t")
        rows.append((sentence_id.split("_")[0], float(rating), sentence.strip()))
    return rows, licence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdist", type=Path, help="vaderSentiment-3.3.2.tar.gz, as `pip download` writes it")
    args = parser.parse_args()

    snippets, licence = read_sdist(args.sdist)
    reviews: dict[str, list[tuple[str, str]]] = {}
    for review, rating, sentence in snippets:
        if abs(rating) >= MIN_STRENGTH:
            reviews.setdefault(review, []).append((sentence, "positive" if rating > 0 else "negative"))
    order = sorted(reviews, key=int)
    rng = random.Random(20141)
    rng.shuffle(order)
    validation: list[tuple[str, str]] = []
    train: list[tuple[str, str]] = []
    for review in order:
        (validation if len(validation) < VALIDATION_ROWS else train).extend(reviews[review])
    rng.shuffle(train)
    rng.shuffle(validation)

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "LICENSE").write_text(licence)
    for name, part in (("train", train[:TRAIN_ROWS]), ("validation", validation)):
        with (OUT / f"{name}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(part)
        positive = sum(label == "positive" for _, label in part)
        print(f"wrote {len(part)} rows ({positive} positive) to {OUT / name}.csv")


if __name__ == "__main__":
    main()
