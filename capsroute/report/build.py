"""`capsroute report`: run directories in, paper tables, figures and findings out.

`make_report` loads every run under the given paths (`capsroute.report.runset`), reduces them
to per-run and per-cell numbers (`capsroute.report.aggregate`), draws the figures
(`capsroute.report.plots`), words the findings (`capsroute.report.findings`) and writes the
requested formats atomically into the output folder (`capsroute.report.write`).
`print_report` shows the same tables (`capsroute.report.tables`) in the terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from capsroute.errors import CapsrouteError, ConfigError
from capsroute.hydra_app import load_config
from capsroute.io import check_output_dir, read_json
from capsroute.report import plots, robustness
from capsroute.report.aggregate import METRICS_CHOICES, comparison_table, per_run, summary_table
from capsroute.report.diagnostics import (
    describe_split,
    diagnostics_table,
    measured,
    reference_values,
)
from capsroute.report.findings import caveats, eval_sentences, findings
from capsroute.report.paper import ensemble_table, table1
from capsroute.report.paper_datasets import section7_table
from capsroute.report.runset import RunSet, load_runs
from capsroute.report.tables import (
    COMPARISON_TITLE,
    DIAGNOSTICS_TITLE,
    ENSEMBLE_TITLE,
    EVAL_TITLE,
    SECTION7_TITLE,
    TABLE1_TITLE,
    TERMINAL_COLUMNS,
    Report,
    comparison_display,
    eval_display,
    eval_split,
    has_validation,
    paper_sections,
    summary_display,
)
from capsroute.report.write import write_outputs
from capsroute.run.rundir import ENSEMBLE_FILE

__all__ = [
    "ENSEMBLE_TITLE",
    "SECTION7_TITLE",
    "TABLE1_TITLE",
    "NoRunsError",
    "Report",
    "eval_display",
    "make_report",
    "parse_formats",
    "print_report",
    "summary_display",
]
FORMATS = ("md", "csv", "tex", "html")
SWEEPS_SUBDIR = "sweeps"  # under the config's out_root, as conf/config.yaml's hydra.sweep.dir


class NoRunsError(CapsrouteError):
    """No run directory, or no usable run, under the given paths: bad input, exit status 2."""

    code = 2


def parse_formats(text: str) -> list[str]:
    """`"md,csv"` -> `["md", "csv"]`; unknown names are a `ConfigError`."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if not names or unknown:
        raise ConfigError(f"unknown --format {unknown or text!r}; choose from {','.join(FORMATS)}")
    return names


def metric_column(metric: str) -> str:
    """`test_acc` -> `final_test_acc`; anything else is a `ConfigError`."""
    if metric not in METRICS_CHOICES:
        raise ConfigError(
            f"unknown --metric {metric!r}; choose one of: {', '.join(METRICS_CHOICES)}"
        )
    return METRICS_CHOICES[metric]


def default_path(cwd: Path, out_root: Path) -> Path:
    """The most recently modified sweep under `OUT_ROOT/sweeps/` (relative to `cwd`)."""
    folder = cwd / out_root / SWEEPS_SUBDIR
    sweeps = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    if not sweeps:
        raise NoRunsError(f"no sweeps under {folder}; give a PATH (a sweep or run directory)")
    return max(sweeps, key=lambda p: (p.stat().st_mtime, p.name))


def resolve_inputs(
    paths: Sequence[Path], out: Path | None, cwd: Path, out_root: Path
) -> tuple[list[Path], Path]:
    """The input folders (default: newest sweep) and the output folder (default PATH/report)."""
    inputs = [Path(p).expanduser() for p in paths] or [default_path(cwd, out_root)]
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise ConfigError(f"no such path: {', '.join(missing)}")
    if out is None and len(inputs) > 1:
        raise ConfigError("several PATHs given: choose where the report goes with --out DIR")
    return inputs, Path(out).expanduser() if out else inputs[0] / "report"


def report_command(
    args: Sequence[Path], out: Path | None, formats: str, metric: str, config_dir: Path | None
) -> Report:
    """`capsroute report ARGS`: ARGS are PATHs and key=value config overrides (an argument
    with "=" that is not an existing path); the composed config gives `out_root` (where the
    default sweep is found) and `report.reference_r`."""
    overrides = [str(a) for a in args if "=" in str(a) and not Path(a).exists()]
    config = load_config(overrides, config_dir)
    inputs = [Path(a) for a in args if str(a) not in overrides]
    return make_report(
        inputs,
        out,
        parse_formats(formats),
        metric,
        out_root=Path(config.out_root),
        reference_r=config.report.reference_r,
    )


def make_report(
    paths: Sequence[Path],
    out: Path | None = None,
    formats: Sequence[str] = FORMATS,
    metric: str = "test_acc",
    cwd: Path | None = None,
    out_root: Path = Path("outputs"),
    reference_r: int | None = None,
) -> Report:
    """Load, aggregate, plot and write; raise `NoRunsError` when nothing usable is found.

    `out_root` and `reference_r` are the config's `out_root` (where sweeps are found when no
    PATH is given) and `report.reference_r` (the r every other r is compared with).
    """
    column = metric_column(metric)
    inputs, out_dir = resolve_inputs(paths, out, cwd or Path.cwd(), Path(out_root))
    runset = load_runs(inputs)
    where = ", ".join(str(p) for p in inputs)
    if runset.found == 0:
        raise NoRunsError(f"no run directories (summary.json or metrics.csv) under {where}")
    if runset.epochs.empty:
        reasons = "; ".join(f"{w.run}: {w.problem}" for w in runset.warnings.itertuples())
        raise NoRunsError(f"none of the {runset.found} runs under {where} is usable ({reasons})")
    check_output_dir(out_dir, "--out")  # before the tables and figures, not after
    runs = per_run(runset.epochs, runset.group_columns)
    robust = robustness.per_run_rows(runset.cross, runset.configs)
    validated = not robust.empty and all(
        runset.configs[run].get("dataset.val_size") is not None for run in robust["run"]
    )
    report = Report(
        out_dir=out_dir,
        runset=runset,
        runs=runs,
        summary=summary_table(runs, runset.group_columns),
        comparison=comparison_table(runs, runset.group_columns, column, reference_r),
        findings=[
            *findings(runs, runset.axes, column, reference_r, runset.configs),
            *(eval_sentences(runset.evals, runset.axes) if not runset.evals.empty else []),
            *robustness.robustness_sentences(robust, validated),
            *caveats(
                runs["run"].nunique(),
                runset.found,
                runset.warnings,
                validated=bool(runs["val_best_epoch"].notna().any()),
                diagnostics=describe_split(runset.routing),
            ),
        ],
        metric=column,
        paper_table1=table1(runs, runset.configs),
        ensembles=ensemble_table(read_ensembles(inputs)),
        diagnostics=diagnostics_table(runset.routing, runset.group_columns),
        paper_section7=section7_table(runs, runset.configs),
        robustness=robust,
    )
    figures = draw_figures(report)
    report.files = [*figures, *write_outputs(report, formats, figures)]
    return report


def draw_figures(report: Report) -> list[Path]:
    """The PNGs, in the order the report shows them."""
    runset, axes, folder = report.runset, report.runset.axes, report.out_dir / "figures"
    label = "final test accuracy" if report.metric == "final_test_acc" else "final test error"
    stem = report.metric.removeprefix("final_")
    epochs, loss_label = with_class_loss(runset.epochs)
    return [
        plots.metric_vs_r(report.runs, axes, report.metric, label, folder / f"{stem}_vs_r.png"),
        plots.per_epoch(
            epochs, axes, "test_acc", "test accuracy (%)",
            folder / "test_acc_curves.png", percent=True, partial=runset.partial,
        ),
        plots.per_epoch(
            epochs,
            axes, "gap", "train-eval minus test accuracy (points)",
            folder / "gap_curves.png", percent=True, zero_line=True, partial=runset.partial,
        ),
        plots.per_epoch(
            epochs, axes, CLASS_LOSS, loss_label, folder / "test_margin_loss.png", log=False,
        ),
        plots.per_epoch(
            epochs, axes, "train_loss", "training loss (log scale)",
            folder / "train_loss.png", log=True, partial=runset.partial,
        ),
        *routing_figures(report),
        *eval_figures(report),
        *(
            [robustness.robustness_figure(report.robustness, folder / robustness.FIGURE)]
            if not report.robustness.empty
            else []
        ),
    ]  # fmt: skip


CLASS_LOSS = "test_class_loss"  # the margin-only test loss, or the total for old runs


def with_class_loss(epochs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """`epochs` with CLASS_LOSS (the margin-only test loss; the total loss where a run did not
    record it) and the axis label, which says when old runs fall back to the total."""
    margin = epochs["test_margin_loss"] if "test_margin_loss" in epochs.columns else None
    if margin is None:
        margin = pd.Series(float("nan"), index=epochs.index)
    label = "test margin loss (overfitting: its rise)"
    if margin.isna().any():
        label = "test margin loss (runs without it: total loss)"
    return epochs.assign(**{CLASS_LOSS: margin.fillna(epochs["test_loss"])}), label


# (column, label, file, log scale): per-iteration routing diagnostics; columns older runs lack
# are skipped.
ROUTING_FIGURES = (
    ("delta_b", r"mean $|\Delta b_{ij}|$ applied (log scale)", "routing_delta_b.png", True),
    ("entropy", "coupling-coefficient entropy (nats)", "routing_entropy.png", False),
    ("entropy_w", "entropy, weighted by $|u_i|$ (nats)", "routing_entropy_w.png", False),
    ("max_c", r"mean strongest coupling $\max_j c_{ij}$", "routing_max_c.png", False),
    ("max_c_w", r"$\max_j c_{ij}$, weighted by $|u_i|$", "routing_max_c_w.png", False),
    ("polarised", r"fraction of $i$ with $\max_j c_{ij} > 0.9$", "routing_polarised.png", False),
    ("polarised_w", r"polarised share, weighted by $|u_i|$", "routing_polarised_w.png", False),
    ("agreement_w", r"agreement $\cos(\hat u_{j^*|i}, v_{j^*})$, $|u_i|$-weighted",
     "routing_agreement_w.png", False),
    ("flip", "fraction predicted ≠ final prediction", "routing_flips.png", False),
)  # fmt: skip


def routing_figures(report: Report) -> list[Path]:
    """Routing diagnostics against the iteration, only measured values
    (`capsroute.report.diagnostics.measured`); uniform couplings as a dashed line."""
    routing, axes = report.runset.routing, report.runset.axes
    if routing.empty:  # no routing at all: baseline CNN runs only
        return []
    frame, reference = measured(routing)
    split = "validation" if "split" in frame.columns and (frame["split"] == "val").all() else ""
    figures = []
    for column, label, name, log in ROUTING_FIGURES:
        if column not in frame.columns or frame[column].isna().all():
            continue
        rows = frame.dropna(subset=[column])
        figures.append(
            plots.routing_at_last_epoch(
                rows,
                axes,
                column,
                label,
                report.out_dir / "figures" / name,
                log=log,
                reference=reference_values(reference, column),
                split=split or "test or validation, see findings",
            )
        )
    return figures


def eval_figures(report: Report) -> list[Path]:
    """`capsroute evaluate`: training r x evaluation r, when some run was evaluated."""
    evals, axes, folder = report.runset.evals, report.runset.axes, report.out_dir / "figures"
    if evals.empty or not (evals["mode"] == "dynamic").any():
        return []
    split = eval_split(evals)
    return [
        plots.eval_r_heatmap(evals, axes, split, folder / "eval_r_heatmap.png"),
        plots.accuracy_vs_eval_r(evals, axes, split, folder / "acc_vs_eval_r.png"),
    ]


def read_ensembles(paths: Sequence[Path]) -> list[dict[str, object]]:
    """Every `ensemble.json` (written by `capsroute.study.ensemble`) at or below `paths`."""
    found = sorted({p.resolve() for path in paths for p in Path(path).rglob(ENSEMBLE_FILE)})
    results = []
    for path in found:
        try:
            results.append(read_json(path))
        except (OSError, ValueError):
            continue  # a damaged file only loses its own row
    return [r for r in results if isinstance(r.get("error"), int | float)]


# --- terminal ---------------------------------------------------------------------------


def rich_table(frame: pd.DataFrame, title: str, columns: Sequence[str] | None = None) -> Table:
    """A rich Table of a display frame (all text cells)."""
    table = Table(title=title)
    names = list(columns or frame.columns)
    for name in names:
        table.add_column(str(name), overflow="fold")
    for _, row in frame.iterrows():
        table.add_row(*(str(row[name]) for name in names))
    return table


def print_report(report: Report, console: Console) -> None:
    """The summary, the comparison, any warnings and the findings, then where files went."""
    keys = [*report.runset.group_columns, "n"]
    summary = summary_display(report)[[*keys, *TERMINAL_COLUMNS]].rename(columns=TERMINAL_COLUMNS)
    console.print(rich_table(summary, "final epoch: mean ± std over seeds (n)"))
    if has_validation(report):
        picked = [*report.runset.group_columns, "n", "test acc at best-val epoch %"]
        console.print(
            rich_table(
                summary_display(report)[[*picked, "best-val epoch"]],
                "epoch chosen on the validation split: test accuracy there",
            )
        )
    if not report.runset.evals.empty:
        console.print(rich_table(eval_display(report), EVAL_TITLE))
    if not report.comparison.empty:
        console.print(rich_table(comparison_display(report), COMPARISON_TITLE))
    if not report.diagnostics.empty:
        console.print(rich_table(report.diagnostics, DIAGNOSTICS_TITLE))
    for title, frame in paper_sections(report):
        console.print(rich_table(frame, title))
    print_warnings(report.runset, console)
    for line in report.findings:
        console.print(f"- {line}", highlight=False)
    console.print(f"report written to {report.out_dir} ({len(report.files)} files)")


def print_warnings(runset: RunSet, console: Console) -> None:
    """The warnings table, if any run was left out."""
    if not runset.warnings.empty:
        console.print(rich_table(runset.warnings, "runs left out of the tables", None))
