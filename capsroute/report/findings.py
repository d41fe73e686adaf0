"""Short findings computed from the per-run table, each sentence carrying its numbers.

Two questions a routing study asks: which r is best per dataset (and is its lead larger than
the seed-to-seed spread?), and does the generalisation gap grow with r? Sentences only claim
what the numbers show: with one seed the spread is said to be unknown, and "within the seed
spread" means the paired-by-seed 95% t interval of the difference contains zero.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pandas as pd

from capsroute.report.runset import axis_label
from capsroute.report.stats import Estimate, estimate, paired_difference
from capsroute.run import rundir

METRIC_WORDS = {
    "final_test_acc": ("final test accuracy", True),
    "final_test_error": ("final test error", False),
}


MODE_AXIS = "routing.mode"


def findings(runs: pd.DataFrame, axes: Sequence[str], metric: str) -> list[str]:
    """Sentences for every dataset (x extra axes): the best r, then the gap trend; with the
    routing controls swept, how dynamic routing compares with them."""
    sentences = []
    for where, block in _blocks(runs, axes):
        if MODE_AXIS in block.columns and (block[MODE_AXIS] != "dynamic").all():
            continue  # a control has no r to choose; control_sentences compares it
        sentences.append(best_r_sentence(where, block, metric))
        if block["r"].nunique() > 1:
            sentences.append(gap_trend_sentence(where, block))
    if MODE_AXIS in axes:
        others = [axis for axis in axes if axis != MODE_AXIS]
        sentences += [
            control_sentence(where, block, metric) for where, block in _blocks(runs, others)
        ]
    return sentences


def _blocks(runs: pd.DataFrame, axes: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    outer = ["dataset", *axes]
    blocks = []
    for key, block in runs.groupby(outer, sort=True):
        values = key if isinstance(key, tuple) else (key,)
        extra = ", ".join(axis_label(a, v) for a, v in zip(axes, values[1:], strict=True))
        blocks.append((f"{values[0]}" + (f" ({extra})" if extra else ""), block))
    return blocks


def control_sentence(where: str, block: pd.DataFrame, metric: str) -> str:
    """Dynamic routing at its best r against the uniform and random controls (Paik et al.)."""
    words, higher_better = METRIC_WORDS[metric]
    dynamic = block[block[MODE_AXIS] == "dynamic"]
    controls = {
        mode: cell for mode, cell in block.groupby(MODE_AXIS, sort=True) if mode != "dynamic"
    }
    if dynamic.empty or not controls:
        modes = ", ".join(sorted(str(m) for m in block[MODE_AXIS].unique()))
        return (
            f"On {where}, only routing={modes} was run, so routing is not compared with a control."
        )
    cells = {r: estimate(cell[metric].tolist()) for r, cell in dynamic.groupby("r")}
    best = (max if higher_better else min)(cells, key=lambda r: cells[r].mean)
    best_seeds = _by_seed(dynamic, best, metric)
    parts = []
    for mode, cell in controls.items():
        value = estimate(cell[metric].tolist())
        diff, seeds = paired_difference(
            best_seeds, dict(zip(cell["seed"], cell[metric], strict=True))
        )
        verdict = _spread_verdict(diff, len(seeds), f"difference dynamic minus {mode}")
        verdict = verdict[0].lower() + verdict[1:].rstrip(".")
        parts.append(f"{mode} coupling {_mean_std(value, long=False)} ({verdict})")
    return (
        f"On {where}, dynamic routing at its best r (r={best}) has {words} "
        f"{_mean_std(cells[best])}; " + "; ".join(parts) + "."
    )


def eval_sentences(evals: pd.DataFrame, axes: Sequence[str], split: str) -> list[str]:
    """For each training r: which evaluation r (dynamic routing) scores best on `split`."""
    frame = evals[(evals["split"] == split) & (evals["mode"] == "dynamic")]
    sentences = []
    for where, block in _blocks(frame, axes):
        parts = []
        for r, cell in block.groupby("r", sort=True):
            means = cell.groupby("eval_r")["accuracy"].mean()
            best = int(means.idxmax())
            text = f"trained r={r}: best at eval r={best} ({_pct(means[best])}%"
            if best != r and r in means.index:
                text += f"; {_pct(means[r])}% at its own r"
            parts.append(text + ")")
        tried = ", ".join(str(r) for r in sorted(block["eval_r"].unique()))
        sentences.append(
            f"On {where}, evaluated with r = {tried} on the {split} set (mean over seeds): "
            + "; ".join(parts)
            + "."
        )
    return sentences


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _signed(value: float) -> str:
    return f"{100 * value:+.2f}"


def _mean_std(value: Estimate, long: bool = True) -> str:
    if value.n < 2:
        return f"{_pct(value.mean)}%" + (" (n=1)" if long else "")
    text = f"{_pct(value.mean)}% ± {_pct(value.std)}"
    return text + (f" (mean ± std, n={value.n})" if long else "")


def _by_seed(block: pd.DataFrame, r: int, column: str) -> dict[object, float]:
    cell = block[block["r"] == r]
    return dict(zip(cell["seed"], cell[column], strict=True))


def best_r_sentence(where: str, block: pd.DataFrame, metric: str) -> str:
    """Which r has the best mean `metric`, by how much over the runner-up, and is it noise?"""
    words, higher_better = METRIC_WORDS[metric]
    cells = {r: estimate(cell[metric].tolist()) for r, cell in block.groupby("r")}
    if len(cells) == 1:
        (r, only), *_ = cells.items()
        return f"On {where}, only r={r} was run ({words} {_mean_std(only)}): r cannot be compared."
    ranked = sorted(cells, key=lambda r: cells[r].mean, reverse=higher_better)
    best, runner = ranked[0], ranked[1]
    lead = abs(cells[best].mean - cells[runner].mean)
    if lead == 0:
        return (
            f"On {where}, r={best} and r={runner} tie on mean {words} ({_pct(cells[best].mean)}%)."
        )
    text = (
        f"On {where}, r={best} has the {'highest' if higher_better else 'lowest'} mean {words}, "
        f"{_mean_std(cells[best])}, {_pct(lead)} points {'above' if higher_better else 'below'} "
        f"the next best, r={runner} ({_mean_std(cells[runner], long=False)})."
    )
    diff, seeds = paired_difference(_by_seed(block, best, metric), _by_seed(block, runner, metric))
    return f"{text} {_spread_verdict(diff, len(seeds), 'difference')}"


def _spread_verdict(diff: Estimate, pairs: int, what: str) -> str:
    if pairs < 2 or math.isnan(diff.ci_low):
        return (
            f"With {pairs} seed(s) in common the seed spread cannot be judged, "
            "so this ordering may be noise."
        )
    interval = f"[{_signed(diff.ci_low)}, {_signed(diff.ci_high)}] points"
    if diff.ci_low <= 0 <= diff.ci_high:
        return (
            f"The paired-by-seed {what} has 95% CI {interval} (n={pairs}): within the seed spread."
        )
    return f"The paired-by-seed {what} has 95% CI {interval} (n={pairs}), which excludes 0."


def gap_trend_sentence(where: str, block: pd.DataFrame) -> str:
    """How the final generalisation gap moves with r: values, slope, monotonicity, seeds."""
    means = block.groupby("r")["gap_final"].mean().sort_index()
    rs, gaps = list(means.index), list(means)
    steps = [b - a for a, b in itertools.pairwise(gaps)]
    rising, falling = all(d > 0 for d in steps), all(d < 0 for d in steps)
    every = " at every step in r" if len(steps) > 1 else ""
    if rising or falling:
        shape = f"the mean {'rises' if rising else 'falls'}{every}"
    else:
        shape = "the mean does not change monotonically with r"
    text = (
        f"On {where}, the final generalisation gap (train-eval minus test accuracy, mean over "
        f"seeds) is {', '.join(_pct(g) for g in gaps)} points for r = "
        f"{', '.join(str(r) for r in rs)} (least-squares slope {_signed(_slope(rs, gaps))} "
        f"points per iteration): {shape}."
    )
    low, high = rs[0], rs[-1]
    diff, seeds = paired_difference(
        _by_seed(block, high, "gap_final"), _by_seed(block, low, "gap_final")
    )
    if not seeds:
        return f"{text} No seed ran at both r={low} and r={high}, so the spread cannot be judged."
    larger = sum(
        _by_seed(block, high, "gap_final")[s] > _by_seed(block, low, "gap_final")[s] for s in seeds
    )
    text += f" The gap is larger at r={high} than at r={low} in {larger} of {len(seeds)} seeds."
    return f"{text} {_spread_verdict(diff, len(seeds), f'change from r={low} to r={high}')}"


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Ordinary least-squares slope of ys on xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def caveats(used: int, found: int, warnings: pd.DataFrame, validated: bool = False) -> list[str]:
    """Sentences about what the numbers rest on, true for any data.

    `warnings`: the runs left out (`RunSet.warnings`); `validated`: some runs held out a
    validation split, whose best epoch is an honest choice.
    """
    left_out = len(warnings)
    lines = [
        f"{used} of {found} run directories are used; {left_out} are left out "
        "(see the warnings table)."
        if left_out
        else f"All {found} run directories found are used.",
        "'Best test accuracy' is best-on-test: the epoch is chosen on the test set, so it "
        "overstates what a held-out choice of epoch would give; the final-epoch numbers are "
        "the unbiased ones.",
    ]
    if validated:
        lines.append(
            "'Test acc at best-val epoch' chooses the epoch on the validation split held out of "
            "the training images (dataset.val_size), so it is an honest held-out choice."
        )
    return lines + unfinished_sentences(warnings)


def unfinished_sentences(warnings: pd.DataFrame) -> list[str]:
    """How many runs are still running or interrupted: drawn in the curves, not in the tables."""
    counts = warnings["status"].value_counts() if not warnings.empty else pd.Series(dtype=int)
    running = int(counts.get(rundir.STATUS_RUNNING, 0))
    interrupted = int(counts.get(rundir.STATUS_INTERRUPTED, 0))
    if not running + interrupted:
        return []
    return [
        f"{running} runs are still running and {interrupted} were interrupted: the tables use "
        "completed runs only; the per-epoch curves draw the unfinished runs dotted, up to "
        "their last epoch."
    ]
