"""Write the quickstart's small review-sentiment dataset (configs/quickstart/{train,validation}.csv).

The rows are composed from hand-written review phrases so the data ships with the project (no download)
and needs real language understanding: negations ("not bad", "hardly worth it") flip the label, and
half the rows mix a positive and a negative clause with a deciding conjunction. Deterministic: running
it again writes the same files.

    python scripts/make_quickstart_data.py
"""

import csv
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "configs" / "quickstart"

PRODUCTS = ["headphones", "coffee maker", "backpack", "phone case", "desk lamp", "blender", "novel",
            "hotel room", "pizza", "running shoes", "laptop", "keyboard", "tent", "vacuum", "jacket",
            "kettle", "board game", "printer", "mattress", "camera"]
PRAISE = ["works perfectly", "exceeded my expectations", "is worth every penny", "feels really solid",
          "was a delight to use", "arrived quickly and works great", "is the best purchase I made this year",
          "does exactly what it promises", "is comfortable and well made", "made my mornings better",
          "looks beautiful", "is surprisingly sturdy", "was easy to set up", "keeps working flawlessly"]
COMPLAINT = ["broke after a week", "is a waste of money", "stopped working on day two",
             "feels cheap and flimsy", "was a huge disappointment", "arrived damaged", "is far too noisy",
             "smells awful", "fell apart quickly", "never worked properly", "is uncomfortable to use",
             "was impossible to set up", "looks nothing like the photos", "overheats constantly"]
GOOD = ["great", "excellent", "fantastic", "lovely", "reliable", "superb", "wonderful", "impressive"]
BAD = ["terrible", "awful", "useless", "disappointing", "poor", "dreadful", "flimsy", "annoying"]
OPENERS = ["Honestly,", "Overall,", "To be fair,", "In short,", "After a month,", "For the price,", ""]


def review(rng: random.Random) -> tuple[str, str]:
    product = rng.choice(PRODUCTS)
    label = rng.choice(["positive", "negative"])
    pos, neg = (PRAISE, COMPLAINT) if label == "positive" else (COMPLAINT, PRAISE)
    good, bad = (GOOD, BAD) if label == "positive" else (BAD, GOOD)
    form = rng.randrange(5)
    if form == 0:
        text = f"The {product} {rng.choice(pos)}."
    elif form == 1:
        text = f"This {product} is {rng.choice(good)}."
    elif form == 2:
        text = f"The {product} is not {rng.choice(bad)} at all."
    elif form == 3:
        text = f"The {product} {rng.choice(neg)}, but overall it {rng.choice(pos)}."
    else:
        text = f"I expected the {product} to be {rng.choice(bad)}, and it {rng.choice(pos)}."
    opener = rng.choice(OPENERS)
    return (f"{opener} {text[0].lower()}{text[1:]}" if opener else text), label


def main() -> None:
    rng = random.Random(20261125)
    rows = sorted({review(rng) for _ in range(2000)})
    rng.shuffle(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:800]), ("validation", rows[800:1000])):
        with (OUT / f"{name}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(part)
        print(f"wrote {len(part)} rows to {OUT / name}.csv")


if __name__ == "__main__":
    main()
