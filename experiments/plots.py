"""Pictures of the latent space for the experiments (matplotlib, Agg backend: no display needed).

The 2-D view is the first two principal components of the corpus latents. A projection
flattens the space: a dark point can land on top of occupied ones in 2-D, so the density
panel beside it shows the true (full-dimensional) density score of every sample.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from latent.samplers import samplers

VERDICT_COLOURS = {"true": "#1a9850", "false": "#d73027", "unparseable": "#fdae61", None: "#999999"}


def _plt():
    import matplotlib  # lazy: matplotlib start-up, only when a picture is drawn

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt  # lazy: once the Agg backend above is chosen

    return plt


def discovery_png(path: str | Path, corpus_xy: np.ndarray, probe_xy: np.ndarray, zone_xy: np.ndarray,
                  zone_volume: list[float], samples: list[dict], title: str) -> Path:
    """Left: corpus latents (grey), dark probe points, zone centres (x, size ~ volume), and every
    candidate at its latent (lm: at the SLLM encoding of its text), coloured by verdict, marker by
    sampler, accepted ones ringed. Right: density score (kNN distance / dark threshold) per sampler.

    samples: dicts with x, y, sampler, verdict, accepted, density_score.
    """
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [1.6, 1]})
    # corpus on top of the candidates, small and dark, so the occupied cloud stays visible
    ax.scatter(corpus_xy[:, 0], corpus_xy[:, 1], s=3, c="#333333", alpha=0.6, linewidths=0,
               label="corpus texts (occupied)", zorder=2.5)
    if len(probe_xy):
        ax.scatter(probe_xy[:, 0], probe_xy[:, 1], s=3, c="#4575b4", alpha=0.15, label="dark probe points", zorder=0)
    specs = samplers()
    names = list(dict.fromkeys(d["sampler"] for d in samples))  # in the order they ran
    style = {n: (specs[n].marker, specs[n].colour) if n in specs else ("o", "#7f7f7f") for n in names}
    for sampler in names:
        marker = style[sampler][0]
        pts = [d for d in samples if d["sampler"] == sampler and d.get("x") is not None]
        if not pts:
            continue
        ax.scatter([d["x"] for d in pts], [d["y"] for d in pts], s=12, marker=marker, alpha=0.4,
                   c=[VERDICT_COLOURS.get(d.get("verdict"), "#999999") for d in pts], linewidths=0, zorder=2)
        ax.scatter([], [], marker=marker, c="#666666", label=f"{sampler} candidates")
        acc = [d for d in pts if d.get("accepted")]
        if acc:
            ax.scatter([d["x"] for d in acc], [d["y"] for d in acc], s=70, marker=marker, facecolors="none",
                       edgecolors="black", linewidths=1.2, zorder=3)
    if len(zone_xy):
        sizes = 60 + 2000 * np.asarray(zone_volume, dtype=float)
        ax.scatter(zone_xy[:, 0], zone_xy[:, 1], s=sizes, marker="X", c="black", alpha=0.8, label="dark zone centres",
                   zorder=4)
    for verdict in ("true", "false", "unparseable"):
        ax.scatter([], [], c=VERDICT_COLOURS[verdict], s=30, label=f"verdict: {verdict}")
    ax.scatter([], [], s=70, facecolors="none", edgecolors="black", label="accepted by the judges")
    ax.set_xlabel("PC 1 of corpus latents")
    ax.set_ylabel("PC 2 of corpus latents")
    ax.set_title("latent space (2-D PCA projection)")
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.1), ncol=4, fontsize=8, frameon=False)

    data = [[d["density_score"] for d in samples if d["sampler"] == n and d.get("density_score") is not None]
            for n in names]
    keep = [(n, v) for n, v in zip(names, data) if v]
    if keep:
        parts = ax2.boxplot([v for _, v in keep], showfliers=False)
        ax2.set_xticks(range(1, len(keep) + 1), [n for n, _ in keep])
        rng = np.random.default_rng(0)
        for i, (n, v) in enumerate(keep, start=1):
            ax2.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=4, alpha=0.3, c=style[n][1])
        del parts
    ax2.axhline(1.0, color="black", linestyle="--", linewidth=1)
    ax2.text(1.0, 1.0, "dark above this line ", va="bottom", ha="right", fontsize=8,
             transform=ax2.get_yaxis_transform())
    ax2.set_ylabel("density score (kNN distance / dark threshold)")
    ax2.set_title("darkness of each sample (full dimension)")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
