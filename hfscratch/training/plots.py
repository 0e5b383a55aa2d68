"""Loss-curve PNG (matplotlib, Agg backend: works headless)."""

from __future__ import annotations

from pathlib import Path


def plot_loss_curve(
    train: list[tuple[int, float]], validation: list[tuple[int, float]], path: str | Path, title: str = "", tokens_per_step: int | None = None
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, lw=0.8, alpha=0.45, color="tab:blue", label="train loss (per step)")
        window = max(1, len(losses) // 50)
        if window > 1:
            smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))]
            ax.plot(steps, smooth, lw=1.6, color="tab:blue", label=f"train loss ({window}-step mean)")
    if validation:
        steps, losses = zip(*validation)
        ax.plot(steps, losses, "o-", lw=1.6, ms=4, color="tab:orange", label="validation loss")
    ax.set_xlabel("optimizer step" + (f" ({tokens_per_step:,} tokens each)" if tokens_per_step else ""))
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title or "pretraining loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
