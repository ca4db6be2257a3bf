#!/usr/bin/env python3
"""Surprise baselines on the same random 90/10 splits of MovieLens-100K that `rbm cf eval` uses.

The splits are written by the Rust side (`rbm cf split`), so both sides see identical train/test
ratings:

    for s in 1 2 3 4 5; do
      rbm cf split --ratings ml-100k --seed $s --test-fraction 0.1 \
          --out-train splits/train$s.tsv --out-test splits/test$s.tsv
    done
    python3 bench/surprise_compare.py splits 1 2 3 4 5

Runs BaselineOnly, SVD(random_state=0), SVD++ (random_state=0) and KNNBaseline (item-based,
pearson_baseline) on each split and prints per-split and mean RMSE / MAE and fit times as JSON
lines, then a Markdown table. Needs `pip install scikit-surprise`. No data is stored here.
"""
import json
import sys
import time

from surprise import SVD, BaselineOnly, Dataset, KNNBaseline, Reader, SVDpp, accuracy
from surprise.model_selection import PredefinedKFold


def algorithms():
    return {
        "BaselineOnly": lambda: BaselineOnly(verbose=False),
        "SVD": lambda: SVD(random_state=0),
        "SVD++": lambda: SVDpp(random_state=0),
        "KNNBaseline": lambda: KNNBaseline(
            sim_options={"name": "pearson_baseline", "user_based": False}, verbose=False
        ),
    }


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    folder, seeds = sys.argv[1], sys.argv[2:]
    only = None
    if "--only" in seeds:
        i = seeds.index("--only")
        only = seeds[i + 1].split(",")
        seeds = seeds[:i]
    reader = Reader(line_format="user item rating", sep="\t", rating_scale=(1, 5))
    results = {}
    for s in seeds:
        data = Dataset.load_from_folds(
            [(f"{folder}/train{s}.tsv", f"{folder}/test{s}.tsv")], reader=reader
        )
        trainset, testset = next(PredefinedKFold().split(data))
        for name, make in algorithms().items():
            if only and name not in only:
                continue
            algo = make()
            t0 = time.time()
            algo.fit(trainset)
            fit_s = time.time() - t0
            pred = algo.test(testset)
            row = {
                "seed": s,
                "algo": name,
                "rmse": accuracy.rmse(pred, verbose=False),
                "mae": accuracy.mae(pred, verbose=False),
                "fit_seconds": fit_s,
                "total_seconds": time.time() - t0,
            }
            print(json.dumps(row), flush=True)
            results.setdefault(name, []).append(row)
    print()
    print("| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean RMSE | mean MAE | fit s |")
    print("|---|" + "---|" * (len(seeds) + 3))
    for name, rows in results.items():
        mean = lambda k: sum(r[k] for r in rows) / len(rows)
        cells = " | ".join(f"{r['rmse']:.4f}" for r in rows)
        print(f"| Surprise {name} | {cells} | {mean('rmse'):.4f} | {mean('mae'):.4f} | {mean('fit_seconds'):.2f} |")


if __name__ == "__main__":
    main()
