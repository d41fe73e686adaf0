"""The report's figures: one PNG each, one panel per dataset, one line per r.

Every line is the mean over seeds; bands and error bars are ± one sample std over seeds (none
with a single seed), and the legend gives n. With extra swept axes, each combination gets its
own line style. matplotlib runs on the Agg backend: no display is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from capsroute.report.runset import axis_label

DPI = 120
PANEL_SIZE = (5.2, 3.8)
LINE_STYLES = ("-", "--", ":", "-.")


def _panels(datasets: Sequence[str]) -> tuple[Figure, list[Axes]]:
    fig, axes = plt.subplots(
        1,
        len(datasets),
        figsize=(PANEL_SIZE[0] * len(datasets), PANEL_SIZE[1]),
        squeeze=False,
        layout="constrained",
    )
    for ax, dataset in zip(axes[0], datasets, strict=True):
        ax.set_title(dataset)
        ax.grid(True, alpha=0.3)
    return fig, list(axes[0])


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _colours(values: Sequence[object]) -> dict[object, tuple[float, ...]]:
    """One colour per r, ordered along a perceptual colour map."""
    cmap = matplotlib.colormaps["viridis"]
    ordered = sorted(set(values))
    step = 0.85 / max(1, len(ordered) - 1)
    return {value: cmap(index * step) for index, value in enumerate(ordered)}


def _variants(frame: pd.DataFrame, axes: Sequence[str]) -> list[tuple[object, ...]]:
    if not axes:
        return [()]
    return sorted(set(frame[list(axes)].itertuples(index=False, name=None)))


def _variant_rows(frame: pd.DataFrame, axes: Sequence[str], variant: tuple) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    for axis, value in zip(axes, variant, strict=True):
        mask &= frame[axis] == value
    return frame[mask]


def _variant_label(axes: Sequence[str], variant: tuple) -> str:
    return ", ".join(axis_label(axis, value) for axis, value in zip(axes, variant, strict=True))


def metric_vs_r(
    runs: pd.DataFrame, axes: Sequence[str], metric: str, label: str, path: Path
) -> Path:
    """Final `metric` (percent) against r per dataset: mean ± std, seeds as dots."""
    datasets = sorted(runs["dataset"].unique())
    fig, panels = _panels(datasets)
    for ax, dataset in zip(panels, datasets, strict=True):
        frame = runs[runs["dataset"] == dataset]
        for index, variant in enumerate(_variants(frame, axes)):
            rows = _variant_rows(frame, axes, variant)
            cells = rows.groupby("r")[metric].agg(["mean", "std", "count"]).reset_index()
            name = _variant_label(axes, variant) or "mean ± std"
            ax.errorbar(
                cells["r"], 100 * cells["mean"], yerr=100 * cells["std"].fillna(0),
                fmt="o" + LINE_STYLES[index % len(LINE_STYLES)], capsize=4, label=name,
            )  # fmt: skip
            ax.scatter(rows["r"], 100 * rows[metric], s=12, color="grey", alpha=0.6, zorder=3)
        ax.set_xticks(sorted(frame["r"].unique()))
        ax.set_xlabel("routing iterations r")
        ax.set_ylabel(f"{label} (%)")
        counts = frame.groupby([*axes, "r"]).size()  # seeds per plotted point
        ax.legend(title=f"n = {_count_text(counts)} seeds; dots: seeds", fontsize="small")
    return _save(fig, path)


def _count_text(counts: pd.Series) -> str:
    values = sorted(set(int(v) for v in counts))
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def per_epoch(
    epochs: pd.DataFrame,
    axes: Sequence[str],
    column: str,
    label: str,
    path: Path,
    percent: bool = False,
    log: bool = False,
    zero_line: bool = False,
    partial: pd.DataFrame | None = None,
) -> Path:
    """`column` against epoch, one line per r (mean over seeds, band ± std).

    `partial`: per-epoch rows (with `status`) of runs still running or interrupted; each is
    drawn on its own, thin and dotted in its r's colour, up to its last epoch, and named so in
    the legend. They never enter the means.
    """
    scale = 100.0 if percent else 1.0
    partial = partial if partial is not None and column in partial.columns else pd.DataFrame()
    both = pd.concat([epochs, partial]) if not partial.empty else epochs
    datasets = sorted(both["dataset"].unique())
    colours = _colours(both["r"].tolist())
    fig, panels = _panels(datasets)
    for ax, dataset in zip(panels, datasets, strict=True):
        frame = epochs[epochs["dataset"] == dataset]
        unfinished = partial[partial["dataset"] == dataset] if not partial.empty else partial
        _unfinished_lines(ax, unfinished, column, scale, colours)
        _lines(ax, frame, axes, "epoch", column, scale, colours=colours)
        frame = pd.concat([frame, unfinished]) if not unfinished.empty else frame
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        if zero_line:
            ax.axhline(0, color="black", linewidth=0.8)
        _integer_ticks(ax, frame["epoch"])
    return _save(fig, path)


def routing_at_last_epoch(
    routing: pd.DataFrame,
    axes: Sequence[str],
    column: str,
    label: str,
    path: Path,
    log: bool,
    reference: dict[str, float] | None = None,
    split: str = "test set",
) -> Path:
    """A routing statistic against the iteration k, at each run's last epoch.

    `reference` (per dataset): the value with uniform couplings, drawn as a dashed line
    instead of points (it is a constant, not a measurement).
    """
    reference = reference or {}
    last = routing.groupby("run")["epoch"].transform("max")
    frame_all = routing[routing["epoch"] == last]
    datasets = sorted(frame_all["dataset"].unique())
    fig, panels = _panels(datasets)
    for ax, dataset in zip(panels, datasets, strict=True):
        frame = frame_all[frame_all["dataset"] == dataset]
        _lines(ax, frame, axes, "iteration", column, 1.0, markers=True)
        if dataset in reference:
            ax.axhline(
                reference[dataset], color="grey", linestyle="--", linewidth=1,
                label="uniform couplings (iteration 1, r = 1): not measured",
            )  # fmt: skip
            ax.legend(fontsize="small")
        ax.set_xlabel(f"routing iteration k (last epoch, {split})")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        _integer_ticks(ax, frame["iteration"])
    return _save(fig, path)


def _lines(
    ax: Axes,
    frame: pd.DataFrame,
    axes: Sequence[str],
    x: str,
    column: str,
    scale: float,
    markers: bool = False,
    colours: dict[object, tuple[float, ...]] | None = None,
) -> None:
    colours = colours or _colours(frame["r"].tolist())
    banded = False
    for index, variant in enumerate(_variants(frame, axes)):
        rows = _variant_rows(frame, axes, variant)
        for r, cell in rows.groupby("r", sort=True):
            stats = cell.groupby(x)[column].agg(["mean", "std"]).reset_index()
            n = cell["run"].nunique()
            name = ", ".join(filter(None, [f"r={r}", _variant_label(axes, variant)]))
            style = LINE_STYLES[index % len(LINE_STYLES)]
            ax.plot(
                stats[x], scale * stats["mean"], style, marker="o" if markers else None,
                color=colours[r], label=f"{name} (n={n})",
            )  # fmt: skip
            if n > 1:
                banded = True
                low = scale * (stats["mean"] - stats["std"])
                high = scale * (stats["mean"] + stats["std"])
                ax.fill_between(stats[x], low, high, color=colours[r], alpha=0.18, linewidth=0)
    ax.legend(fontsize="small", title="mean; band ± 1 std" if banded else "mean")


def _unfinished_lines(
    ax: Axes,
    frame: pd.DataFrame,
    column: str,
    scale: float,
    colours: dict[object, tuple[float, ...]],
) -> None:
    """One thin dotted line per unfinished run, ending in an open circle at its last epoch."""
    if frame.empty:
        return
    for run, rows in frame.groupby("run", sort=True):
        rows = rows.sort_values("epoch")
        last = rows.iloc[-1]
        ax.plot(
            rows["epoch"], scale * rows[column], ":", linewidth=1.0, color=colours[last["r"]],
            label=f"{run} ({last['status']}, epoch {int(last['epoch'])})",
        )  # fmt: skip
        ax.plot(
            [last["epoch"]], [scale * last[column]], "o", markerfacecolor="none",
            color=colours[last["r"]],
        )  # fmt: skip


def _integer_ticks(ax: Axes, values: pd.Series) -> None:
    ticks = sorted(int(v) for v in values.unique())
    if len(ticks) <= 12:
        ax.set_xticks(ticks)


def _eval_rows(evals: pd.DataFrame, split: str, mode: str = "dynamic") -> pd.DataFrame:
    """The `capsroute evaluate` rows of one split and evaluation mode."""
    return evals[(evals["split"] == split) & (evals["mode"] == mode)]


def eval_r_heatmap(evals: pd.DataFrame, axes: Sequence[str], split: str, path: Path) -> Path:
    """Accuracy (%) by training r (rows, x other swept axes) and evaluation r (columns).

    Mean over seeds in each cell, written in the cell; dynamic routing at every evaluation r.
    The diagonal (evaluation r = training r) is what the runs recorded themselves.
    """
    frame_all = _eval_rows(evals, split)
    datasets = sorted(frame_all["dataset"].unique())
    fig, panels = _panels(datasets)
    for ax, dataset in zip(panels, datasets, strict=True):
        ax.grid(False)
        frame = frame_all[frame_all["dataset"] == dataset]
        keys = [*axes, "r"]
        table = (
            frame.groupby([*keys, "eval_r"])["accuracy"].mean().unstack("eval_r").sort_index()
        )  # (train cells, eval r)
        counts = frame.groupby(keys)["run"].nunique()
        image = ax.imshow(100 * table.to_numpy(), aspect="auto", cmap="viridis")
        for row in range(table.shape[0]):
            for col in range(table.shape[1]):
                value = table.iat[row, col]
                if pd.notna(value):
                    ax.text(col, row, f"{100 * value:.1f}", ha="center", va="center",
                            color="white", fontsize="small")  # fmt: skip
        ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
        labels = []
        for key in table.index:
            values = key if isinstance(key, tuple) else (key,)
            extra = _variant_label(axes, tuple(values[:-1]))
            n = int(counts.get(key, 0))
            labels.append(", ".join(filter(None, [f"r={values[-1]}", extra])) + f" (n={n})")
        ax.set_yticks(range(table.shape[0]), labels)
        ax.set_xlabel(f"evaluation r ({split} set, dynamic routing)")
        ax.set_ylabel("training")
        fig.colorbar(image, ax=ax, label=f"{split} accuracy (%), mean over seeds")
    return _save(fig, path)


def accuracy_vs_eval_r(evals: pd.DataFrame, axes: Sequence[str], split: str, path: Path) -> Path:
    """Accuracy against evaluation r, one line per training r (band ± std over seeds).

    A star marks each line's training r, where the evaluation repeats the run's own.
    """
    frame_all = _eval_rows(evals, split)
    datasets = sorted(frame_all["dataset"].unique())
    fig, panels = _panels(datasets)
    for ax, dataset in zip(panels, datasets, strict=True):
        frame = frame_all[frame_all["dataset"] == dataset]
        _lines(ax, frame, axes, "eval_r", "accuracy", 100.0, markers=True)
        colours = _colours(frame["r"].tolist())
        own = frame[frame["eval_r"] == frame["r"]]
        for variant in _variants(own, axes):
            for r, cell in _variant_rows(own, axes, variant).groupby("r"):
                value = 100 * cell["accuracy"].mean()
                ax.plot([r], [value], "*", markersize=14, color=colours[r], zorder=4)
        ax.set_xlabel(f"evaluation r ({split} set; star: training r)")
        ax.set_ylabel(f"{split} accuracy (%)")
        _integer_ticks(ax, frame["eval_r"])
    return _save(fig, path)
