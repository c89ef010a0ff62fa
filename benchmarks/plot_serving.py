"""The serving benchmark's figures as a picture: generated tokens/s against concurrent
clients, one panel per completion length, a line per side and run (benchmarks/serving.py's
serving.json).

  plot_serving.py SERVING_JSON OUT_SVG
"""
import json
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"quark": "tab:blue", "baseline": "tab:grey", "peer-1t": "tab:orange", "peer-2t": "tab:red"}
ORDERS = {"0": "run 1", "1": "run 2"}


def main():
    source, out = sys.argv[1:3]
    results = json.load(open(source))
    lengths = sorted({row["max_tokens"] for rows in results.values() for row in rows})
    figure, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 4), sharey=True)
    for axis, length in zip(axes, lengths):
        for key, rows in sorted(results.items()):
            run, side = key.split("-", 1)
            points = sorted((r["concurrency"], r["tokens_per_s"]) for r in rows if r["max_tokens"] == length)
            axis.plot([c for c, _ in points], [t for _, t in points], marker="o",
                      linestyle="-" if run == "0" else "--", color=COLOURS[side],
                      label=f"{side}, {ORDERS[run]}")
        axis.set_xscale("log", base=2)
        axis.set_xticks([1, 4, 16, 64], ["1", "4", "16", "64"])
        axis.set_xlabel("concurrent clients")
        axis.set_title(f"{length} new tokens per request")
        axis.grid(True, alpha=0.3)
    axes[0].set_ylabel("generated tokens/s")
    axes[0].legend(fontsize=8)
    figure.suptitle("Serving the cold-start model on 2 CPU cores (scripts/bench-serving)")
    figure.tight_layout()
    figure.savefig(out, metadata={"Date": None})


if __name__ == "__main__":
    main()
