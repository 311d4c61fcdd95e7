"""A PNG of a spectral density estimate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metasam._plotting import pyplot, save_figure


def plot_density(extra: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Save the smoothed Hessian eigenvalue density (log scale) with its quadrature nodes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    density = [max(v, 1e-12) for v in extra["density"]]
    ax.semilogy(extra["grid"], density, color="tab:blue", lw=1.5,
                label=f"SLQ density (Gaussian kernel, σ = {extra['sigma']:.3g})")
    nodes = [n for row, wrow in zip(extra["nodes"], extra["weights"], strict=True)
             for n, w in zip(row, wrow, strict=True) if w > 0]
    ax.plot(nodes, [min(density) * 1.5] * len(nodes), "|", color="tab:orange", ms=10,
            label="quadrature nodes")
    ax.set_xlabel("Hessian eigenvalue λ")
    ax.set_ylabel("density (log scale)")
    ax.set_title(title or "Hessian spectral density")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
