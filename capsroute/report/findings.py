"""Findings computed from the per-run table, each sentence carrying its numbers.

Nothing is chosen on the numbers it is reported on:

- with a validation split in every run of a dataset (`dataset.val_size`), the r (and the
  epoch, and the evaluation r of `capsroute evaluate`) is chosen on validation accuracy, and
  the sentence gives the test accuracy of that choice, compared with every other r and every
  routing control on the test set (paired by seed, Bonferroni-adjusted intervals);
- without one, no r is named best. The sentence gives the pre-declared comparisons instead:
  every r against a reference r (`report.reference_r`; default r = 3 when run, else the
  smallest r) and every routing control against every dynamic r, paired by seed with
  Bonferroni-adjusted intervals (`capsroute.report.compare`).

One seed means no interval and no better/worse. The findings open with the two claims of
`capsroute.report.hypotheses`, and end with what the data cannot say: cells mixing training
lengths, and subset or short runs (a measure of convergence speed, not of final accuracy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from capsroute.config import TrainConfig
from capsroute.report.compare import DYNAMIC, MODE_AXIS, Comparison, by_seed, compare, reference_r
from capsroute.report.hypotheses import (
    METRIC_WORDS,
    chance_text,
    choice_sentence,
    overfit_sentence,
    validated,
)
from capsroute.report.stats import estimate
from capsroute.report.wording import (
    adjustment_text,
    blocks,
    comparison_text,
    dynamic_rows,
    mean_std,
    pct,
)
from capsroute.run import rundir

# Runs shorter than the configured default, or on a training subset, measure convergence speed.
FULL_LENGTH_EPOCHS = TrainConfig().epochs


def findings(
    runs: pd.DataFrame,
    axes: Sequence[str],
    metric: str,
    reference: int | None = None,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """The claims first (per dataset x axes other than the routing mode), then per block the
    r comparison, the controls, mixed-length flags, and the training-scope label."""
    others = [axis for axis in axes if axis != MODE_AXIS]
    found = blocks(runs, others)
    sentences = []
    for where, block in found:
        dynamic = dynamic_rows(block)
        if dynamic.empty:
            continue
        sentences += [overfit_sentence(where, dynamic), choice_sentence(where, dynamic, metric)]
    for where, block in found:
        if validated(block):
            sentences.append(validated_sentence(where, block))
        else:
            sentences.append(predeclared_sentence(where, block, metric, reference))
        sentences += mixed_length_sentences(where, block, others)
        failed = chance_text({int(r): cell for r, cell in dynamic_rows(block).groupby("r")})
        if failed:
            sentences.append(
                f"Flag: on {where}, {failed}: final train-eval accuracy at chance, so these "
                "runs did not learn (a failed optimisation, not an effect of routing on "
                "generalisation); comparisons with them say only that."
            )
    scope = scope_sentence(runs, configs or {})
    return sentences + ([scope] if scope else [])


def _controls(block: pd.DataFrame) -> dict[str, pd.DataFrame]:
    if MODE_AXIS not in block.columns:
        return {}
    return {str(m): cell for m, cell in block.groupby(MODE_AXIS, sort=True) if m != DYNAMIC}


def validated_sentence(where: str, block: pd.DataFrame) -> str:
    """The r with the highest mean validation accuracy, its test accuracy at the epoch chosen
    on validation, and that r against every other r and control on the test set."""
    dynamic, controls = dynamic_rows(block), _controls(block)
    if dynamic.empty:
        return f"On {where}, no run used dynamic routing, so no r is chosen."
    val = dynamic.groupby("r")["best_val_acc"].mean()
    chosen = int(val.idxmax())  # first highest mean validation accuracy
    test = "test_acc_at_val_best"
    cell = dynamic[dynamic["r"] == chosen]
    text = (
        f"On {where}, r={chosen} has the highest mean validation accuracy "
        f"({', '.join(f'r={r}: {pct(v)}%' for r, v in val.items())}; r and epoch both chosen "
        f"on validation); its test accuracy at the epoch chosen on validation is "
        f"{mean_std(estimate(cell[test].tolist()))}."
    )
    pairs = [
        (f"r={chosen}", by_seed(cell, test), f"r={r}", by_seed(other, test))
        for r, other in dynamic.groupby("r", sort=True)
        if r != chosen
    ]
    pairs += [
        (f"r={chosen}", by_seed(cell, test), mode, by_seed(other, test))
        for mode, other in controls.items()
    ]
    if not pairs:
        return text
    found = compare(pairs)
    return (
        f"{text} Against the rest on the test set, paired by seed, {adjustment_text(found)}: "
        + "; ".join(comparison_text(c) for c in found)
        + "."
    )


def predeclared_sentence(
    where: str, block: pd.DataFrame, metric: str, reference: int | None
) -> str:
    """No validation split: every r against the reference r, every control against every
    dynamic r, on `metric`, with no winner named."""
    words, _ = METRIC_WORDS[metric]
    dynamic, controls = dynamic_rows(block), _controls(block)
    rs = sorted(int(r) for r in dynamic["r"].unique())
    if not rs:
        return f"On {where}, no run used dynamic routing, so r is not compared."
    cells = {r: by_seed(dynamic[dynamic["r"] == r], metric) for r in rs}
    means = ", ".join(
        f"r={r}: {mean_std(estimate(list(cells[r].values())), long=False)}" for r in rs
    )
    text = (
        f"On {where}, not every run has a validation split, so no r is named best "
        f"({words}, mean ± std over seeds: {means}"
    )
    text += "".join(
        f"; {mode}: {mean_std(estimate(cell[metric].tolist()), long=False)}"
        for mode, cell in controls.items()
    )
    text += ")."
    ref, why = reference_r(rs, reference)
    pairs = [(f"r={r}", cells[r], f"r={ref}", cells[ref]) for r in rs if r != ref]
    pairs += [
        (mode, by_seed(cell, metric), f"r={r}", cells[r])
        for mode, cell in controls.items()
        for r in rs
    ]
    if not pairs:
        return f"{text} Only r={ref} was run: r cannot be compared."
    found: list[Comparison] = compare(pairs)
    return (
        f"{text} Pre-declared comparisons on the {words} (reference r={ref}: {why}"
        + ("; every control against every dynamic r" if controls else "")
        + f"), paired by seed, {adjustment_text(found)}: "
        + "; ".join(comparison_text(c) for c in found)
        + "."
    )


def mixed_length_sentences(where: str, block: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """A flag for every cell whose runs recorded different numbers of epochs."""
    keys = [MODE_AXIS, "r"] if MODE_AXIS in block.columns else ["r"]
    out = []
    for key, cell in block.groupby(keys, sort=True):
        lengths = sorted(int(n) for n in cell["epochs_run"].unique())
        if len(lengths) > 1:
            name = ", ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
            out.append(
                f"Flag: on {where}, the runs of cell {name} trained for different lengths "
                f"({', '.join(str(n) for n in lengths)} epochs: early stopping or a different "
                "train.epochs), so its seeds are not replicates of one schedule."
            )
    lengths = sorted(int(n) for n in block["epochs_run"].unique())
    if len(lengths) > 1 and not out:
        out.append(
            f"Flag: on {where}, cells trained for different lengths "
            f"({', '.join(str(n) for n in lengths)} epochs), so their comparisons mix training "
            "length with routing."
        )
    return out


def scope_sentence(runs: pd.DataFrame, configs: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Subset or short runs (e.g. `experiment=quick`): convergence speed, not final accuracy."""
    subset, short = set(), set()
    for name in runs["run"]:
        config = configs.get(name, {})
        if config.get("dataset.train_size") is not None:
            subset.add(config["dataset.train_size"])
        epochs = config.get("train.epochs")
        if isinstance(epochs, int) and epochs < FULL_LENGTH_EPOCHS:
            short.add(epochs)
    if not subset and not short:
        return None
    parts = []
    if subset:
        parts.append(f"a training subset (dataset.train_size={_values(subset)})")
    if short:
        parts.append(f"{_values(short)} epoch(s) (fewer than the default {FULL_LENGTH_EPOCHS})")
    return (
        f"Scope: runs here train on {' for '.join(parts)}: their accuracies measure convergence "
        "speed, not the final accuracy of a fully trained network."
    )


def _values(values: set[Any]) -> str:
    return ", ".join(str(v) for v in sorted(values))


def eval_sentences(evals: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """`capsroute evaluate`: per training r, the evaluation r chosen on the validation split
    with its test accuracy; without validation rows, the test accuracies and no choice."""
    dynamic = evals[evals["mode"] == DYNAMIC]
    has_val = "val" in set(dynamic["split"])
    sentences = []
    for where, block in blocks(dynamic, axes):
        parts = []
        for r, cell in block.groupby("r", sort=True):
            test = cell[cell["split"] == "test"].groupby("eval_r")["accuracy"].mean()
            if has_val and (cell["split"] == "val").any():
                val = cell[cell["split"] == "val"].groupby("eval_r")["accuracy"].mean()
                best = int(val.idxmax())
                text = f"trained r={r}: eval r={best} chosen on validation ({pct(val[best])}%"
                text += f"; test {pct(test[best])}%)" if best in test.index else "; no test rows)"
            else:
                listed = ", ".join(f"r={e}: {pct(a)}%" for e, a in test.items())
                text = f"trained r={r}: test {listed}"
            parts.append(text)
        tried = ", ".join(str(r) for r in sorted(block["eval_r"].unique()))
        how = (
            "the evaluation r chosen on the validation split"
            if has_val
            else "no validation split was evaluated, so no evaluation r is named best"
        )
        sentences.append(
            f"On {where}, evaluated with r = {tried} (mean over seeds; {how}): "
            + "; ".join(parts)
            + "."
        )
    return sentences


def caveats(
    used: int, found: int, warnings: pd.DataFrame, validated: bool = False, diagnostics: str = ""
) -> list[str]:
    """Sentences about what the numbers rest on, true for any data.

    `warnings`: the runs left out (`RunSet.warnings`); `validated`: some runs held out a
    validation split, whose best epoch is an honest choice.
    `diagnostics`: where the routing diagnostics were measured (a sentence), if any.
    """
    left_out = len(warnings)
    lines = [
        f"{used} of {found} run directories are used; {left_out} are left out "
        "(see the warnings table)."
        if left_out
        else f"All {found} run directories found are used.",
        "The best-on-test accuracy chooses the epoch on the test set, so it overstates what a "
        "held-out choice of epoch would give; no finding above uses it.",
    ]
    if validated:
        lines.append(
            "'Test acc at best-val epoch' chooses the epoch on the validation split held out of "
            "the training images (dataset.val_size), so it is an honest held-out choice."
        )
    if diagnostics:
        lines.append(diagnostics)
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
