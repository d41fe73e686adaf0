"""`capsroute report`: run directories in, paper tables, figures and findings out.

`make_report` loads every run under the given paths (`capsroute.report.runset`), reduces them
to per-run and per-cell numbers (`capsroute.report.aggregate`), draws the figures
(`capsroute.report.plots`), words the findings (`capsroute.report.findings`) and writes the
requested formats atomically into the output folder. `print_report` shows the same tables in
the terminal.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from capsroute.errors import CapsrouteError, ConfigError
from capsroute.io import atomic_write_text, check_output_dir, read_json
from capsroute.report import plots
from capsroute.report.aggregate import METRICS_CHOICES, comparison_table, per_run, summary_table
from capsroute.report.findings import caveats, eval_sentences, findings
from capsroute.report.paper import ensemble_table, table1
from capsroute.report.runset import RunSet, load_runs
from capsroute.run.rundir import ENSEMBLE_FILE

FORMATS = ("md", "csv", "tex", "html")
SWEEPS_DIR = Path("outputs") / "sweeps"
PM = " ± "


class NoRunsError(CapsrouteError):
    """No run directory, or no usable run, under the given paths: bad input, exit status 2."""

    code = 2


@dataclass
class Report:
    """What a report computed and where it wrote it."""

    out_dir: Path
    runset: RunSet
    runs: pd.DataFrame
    summary: pd.DataFrame
    comparison: pd.DataFrame
    findings: list[str]
    metric: str
    files: list[Path] = field(default_factory=list)
    # the paper's own tables beside ours (capsroute.paper); empty when nothing matches
    paper_table1: pd.DataFrame = field(default_factory=pd.DataFrame)
    ensembles: pd.DataFrame = field(default_factory=pd.DataFrame)


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


def default_path(cwd: Path) -> Path:
    """The most recently modified sweep under `outputs/sweeps/`."""
    folder = cwd / SWEEPS_DIR
    sweeps = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    if not sweeps:
        raise NoRunsError(f"no sweeps under {folder}; give a PATH (a sweep or run directory)")
    return max(sweeps, key=lambda p: (p.stat().st_mtime, p.name))


def resolve_inputs(paths: Sequence[Path], out: Path | None, cwd: Path) -> tuple[list[Path], Path]:
    """The input folders (default: newest sweep) and the output folder (default PATH/report)."""
    inputs = [Path(p).expanduser() for p in paths] or [default_path(cwd)]
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise ConfigError(f"no such path: {', '.join(missing)}")
    if out is None and len(inputs) > 1:
        raise ConfigError("several PATHs given: choose where the report goes with --out DIR")
    return inputs, Path(out).expanduser() if out else inputs[0] / "report"


def make_report(
    paths: Sequence[Path],
    out: Path | None = None,
    formats: Sequence[str] = FORMATS,
    metric: str = "test_acc",
    cwd: Path | None = None,
) -> Report:
    """Load, aggregate, plot and write; raise `NoRunsError` when nothing usable is found."""
    column = metric_column(metric)
    inputs, out_dir = resolve_inputs(paths, out, cwd or Path.cwd())
    runset = load_runs(inputs)
    where = ", ".join(str(p) for p in inputs)
    if runset.found == 0:
        raise NoRunsError(f"no run directories (summary.json or metrics.csv) under {where}")
    if runset.epochs.empty:
        reasons = "; ".join(f"{w.run}: {w.problem}" for w in runset.warnings.itertuples())
        raise NoRunsError(f"none of the {runset.found} runs under {where} is usable ({reasons})")
    check_output_dir(out_dir, "--out")  # before the tables and figures, not after
    runs = per_run(runset.epochs, runset.group_columns)
    report = Report(
        out_dir=out_dir,
        runset=runset,
        runs=runs,
        summary=summary_table(runs, runset.group_columns),
        comparison=comparison_table(runs, runset.group_columns, column),
        findings=[
            *findings(runs, runset.axes, column),
            *(
                eval_sentences(runset.evals, runset.axes, eval_split(runset.evals))
                if not runset.evals.empty
                else []
            ),
            *caveats(
                runs["run"].nunique(),
                runset.found,
                len(runset.warnings),
                validated=bool(runs["val_best_epoch"].notna().any()),
            ),
        ],
        metric=column,
        paper_table1=table1(runs, runset.configs),
        ensembles=ensemble_table(read_ensembles(inputs)),
    )
    figures = draw_figures(report)
    report.files = [*figures, *write_outputs(report, formats, figures)]
    return report


def draw_figures(report: Report) -> list[Path]:
    """The six PNGs, in the order the report shows them."""
    runset, axes, folder = report.runset, report.runset.axes, report.out_dir / "figures"
    label = "final test accuracy" if report.metric == "final_test_acc" else "final test error"
    stem = report.metric.removeprefix("final_")
    return [
        plots.metric_vs_r(report.runs, axes, report.metric, label, folder / f"{stem}_vs_r.png"),
        plots.per_epoch(
            runset.epochs, axes, "test_acc", "test accuracy (%)",
            folder / "test_acc_curves.png", percent=True,
        ),
        plots.per_epoch(
            runset.epochs,
            axes, "gap", "train-eval minus test accuracy (points)",
            folder / "gap_curves.png", percent=True, zero_line=True,
        ),
        plots.per_epoch(
            runset.epochs, axes, "train_loss", "training loss (log scale)",
            folder / "train_loss.png", log=True,
        ),
        *([
            plots.routing_at_last_epoch(
                runset.routing, axes, "delta_b", r"mean $|\Delta b_{ij}|$ (log scale)",
                folder / "routing_delta_b.png", log=True,
            ),
            plots.routing_at_last_epoch(
                runset.routing, axes, "entropy", "coupling-coefficient entropy (nats)",
                folder / "routing_entropy.png", log=False,
            ),
        ] if not runset.routing.empty else []),  # no routing at all: baseline CNN runs only
        *optional_figures(report),
    ]  # fmt: skip


# Per-iteration routing columns newer runs record (older routing.csv files lack them).
POLARISATION_FIGURES = (
    ("max_c", r"mean strongest coupling $\max_j c_{ij}$", "routing_max_c.png"),
    ("polarised", r"fraction of $i$ with $\max_j c_{ij} > 0.9$", "routing_polarised.png"),
    ("flip", "fraction predicted ≠ final prediction", "routing_flips.png"),
)


def eval_split(evals: pd.DataFrame) -> str:
    """The split the evaluation figures show: `test` when measured, else the first one."""
    splits = sorted(evals["split"].unique())
    return "test" if "test" in splits else splits[0]


def optional_figures(report: Report) -> list[Path]:
    """Figures for data only some runs have: newer routing diagnostics, `capsroute evaluate`."""
    runset, axes, folder = report.runset, report.runset.axes, report.out_dir / "figures"
    figures = []
    for column, label, name in POLARISATION_FIGURES:
        if column in runset.routing.columns and runset.routing[column].notna().any():
            rows = runset.routing.dropna(subset=[column])
            figures.append(
                plots.routing_at_last_epoch(rows, axes, column, label, folder / name, log=False)
            )
    evals = runset.evals
    if not evals.empty and (evals["mode"] == "dynamic").any():
        split = eval_split(evals)
        figures += [
            plots.eval_r_heatmap(evals, axes, split, folder / "eval_r_heatmap.png"),
            plots.accuracy_vs_eval_r(evals, axes, split, folder / "acc_vs_eval_r.png"),
        ]
    return figures


# --- formatting -------------------------------------------------------------------------


def _num(value: float, digits: int, scale: float = 1.0) -> str:
    return "–" if value is None or math.isnan(value) else f"{scale * value:.{digits}f}"


def _mean_std(row: pd.Series, name: str, digits: int, scale: float = 1.0) -> str:
    mean, std = row[f"{name}_mean"], row[f"{name}_std"]
    if math.isnan(std):
        return _num(mean, digits, scale)
    return f"{_num(mean, digits, scale)}{PM}{_num(std, digits, scale)}"


def _ci(row: pd.Series, name: str, digits: int, scale: float = 1.0) -> str:
    low, high = row[f"{name}_ci_low"], row[f"{name}_ci_high"]
    if math.isnan(low):
        return "–"
    return f"[{_num(low, digits, scale)}, {_num(high, digits, scale)}]"


SUMMARY_COLUMNS: list[tuple[str, Callable[[pd.Series], str]]] = [
    ("test acc %", lambda r: _mean_std(r, "final_test_acc", 2, 100)),
    ("test acc 95% CI", lambda r: _ci(r, "final_test_acc", 2, 100)),
    ("test error %", lambda r: _mean_std(r, "final_test_error", 2, 100)),
    ("test error 95% CI", lambda r: _ci(r, "final_test_error", 2, 100)),
    ("best-on-test acc %", lambda r: _mean_std(r, "best_test_acc", 2, 100)),
    ("best epoch", lambda r: _mean_std(r, "best_epoch", 1)),
    ("train-eval acc %", lambda r: _mean_std(r, "final_train_eval_acc", 2, 100)),
    ("gap end (pts)", lambda r: _mean_std(r, "gap_final", 2, 100)),
    ("gap max (pts)", lambda r: _mean_std(r, "gap_max", 2, 100)),
    ("overfit (test-loss rise)", lambda r: _mean_std(r, "overfit", 4)),
    ("s/epoch", lambda r: _mean_std(r, "seconds_per_epoch", 2)),
    ("images/s", lambda r: _mean_std(r, "images_per_s", 0)),
]
# With a validation split: the epoch is chosen on validation, and the test accuracy there.
VAL_COLUMNS: list[tuple[str, Callable[[pd.Series], str]]] = [
    ("test acc at best-val epoch %", lambda r: _mean_std(r, "test_acc_at_val_best", 2, 100)),
    ("best-val epoch", lambda r: _mean_std(r, "val_best_epoch", 1)),
    ("best val acc %", lambda r: _mean_std(r, "best_val_acc", 2, 100)),
]
# Terminal: the headline columns under short names, so the table fits a normal window.
TERMINAL_COLUMNS = {
    "test acc %": "test acc %",
    "test acc 95% CI": "95% CI",
    "best-on-test acc %": "best-on-test %",
    "best epoch": "best ep.",
    "gap end (pts)": "gap end",
    "gap max (pts)": "gap max",
    "overfit (test-loss rise)": "overfit",
    "s/epoch": "s/epoch",
    "images/s": "img/s",
}


def has_validation(report: Report) -> bool:
    """Whether any run chose its best epoch on a validation split (dataset.val_size)."""
    return bool(report.runs["val_best_epoch"].notna().any())


def summary_columns(report: Report) -> list[tuple[str, Callable[[pd.Series], str]]]:
    """Final-epoch numbers first; then validation-selected ones when runs have a val split."""
    if not has_validation(report):
        return SUMMARY_COLUMNS
    best_on_test = [i for i, (name, _) in enumerate(SUMMARY_COLUMNS) if name.startswith("best")]
    at = best_on_test[0] if best_on_test else len(SUMMARY_COLUMNS)
    return [*SUMMARY_COLUMNS[:at], *VAL_COLUMNS, *SUMMARY_COLUMNS[at:]]


def summary_display(report: Report) -> pd.DataFrame:
    """The summary table as text cells: percent, mean ± std, [CI low, CI high]."""
    keys = [*report.runset.group_columns, "n"]
    columns = summary_columns(report)
    rows = [
        {**{k: row[k] for k in keys}, **{name: cell(row) for name, cell in columns}}
        for _, row in report.summary.iterrows()
    ]
    return pd.DataFrame(rows, columns=[*keys, *(name for name, _ in columns)])


def eval_display(report: Report) -> pd.DataFrame:
    """`capsroute evaluate` accuracy (%) by training cell (rows) and evaluation r (columns).

    Mean over seeds on one split (test when measured), dynamic routing at each evaluation r;
    a run trained with a control (uniform/random) adds a column for its own mode.
    """
    evals = report.runset.evals
    if evals.empty:
        return pd.DataFrame()
    split = eval_split(evals)
    frame = evals[evals["split"] == split].copy()
    frame["column"] = [
        f"eval r={r}" if mode == "dynamic" else f"own {mode}"
        for r, mode in zip(frame["eval_r"], frame["mode"], strict=True)
    ]
    keys = report.runset.group_columns
    table = frame.pivot_table(index=keys, columns="column", values="accuracy", aggfunc="mean")
    order = sorted(table.columns, key=lambda c: (not c.startswith("eval"), len(c), c))
    table = (100 * table[order]).round(2).reset_index()
    seeds = frame.groupby(keys)["run"].nunique().rename("n").reset_index()
    table = table.merge(seeds, on=keys)
    table.insert(len(keys), "split", split)
    return table[[*keys, "split", "n", *order]].astype(object).fillna("–")


def comparison_display(report: Report) -> pd.DataFrame:
    """Each r against the smallest r: paired difference of the metric, in points."""
    outer = [c for c in report.runset.group_columns if c != "r"]
    what = "test acc" if report.metric == "final_test_acc" else "test error"
    rows = [
        {
            **{k: row[k] for k in outer},
            "r": row["r"],
            "vs r": row["baseline_r"],
            "paired seeds": row["n_pairs"],
            f"Δ {what} (pts)": _mean_std(row, "diff", 2, 100),
            "95% CI": _ci(row, "diff", 2, 100),
        }
        for _, row in report.comparison.iterrows()
    ]
    columns = [*outer, "r", "vs r", "paired seeds", f"Δ {what} (pts)", "95% CI"]
    return pd.DataFrame(rows, columns=columns)


def _tex(frame: pd.DataFrame) -> str:
    """LaTeX (booktabs) with text escaped by hand, so that ± can become $\\pm$."""

    def escape(text: object) -> str:
        out = str(text)
        for char in ("\\", "&", "%", "$", "#", "_", "{", "}"):
            out = out.replace(char, "\\" + char)
        return out.replace("±", "$\\pm$").replace("Δ", "$\\Delta$").replace("–", "--")

    escaped = frame.map(escape)
    escaped.columns = [escape(c) for c in frame.columns]
    return escaped.to_latex(index=False, escape=False)


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


TABLE1_TITLE = "Sabour et al. (2017), Table 1: MNIST test error (%), ours beside the paper's"
ENSEMBLE_TITLE = "Ensembles: test error (%) of the averaged class-capsule lengths"


def paper_sections(report: Report) -> list[tuple[str, pd.DataFrame]]:
    """The paper-layout tables that have data: (title, display frame)."""
    sections = [(TABLE1_TITLE, report.paper_table1), (ENSEMBLE_TITLE, report.ensembles)]
    return [(title, frame) for title, frame in sections if not frame.empty]


# --- writing ----------------------------------------------------------------------------


def write_outputs(report: Report, formats: Sequence[str], figures: list[Path]) -> list[Path]:
    """Write every file of the requested formats; return their paths."""
    out = report.out_dir
    written: list[Path] = []

    def put(name: str, text: str) -> None:
        atomic_write_text(out / name, text)
        written.append(out / name)

    summary, comparison = summary_display(report), comparison_display(report)
    warnings = report.runset.warnings
    if "csv" in formats and not report.runset.evals.empty:
        put("evals.csv", report.runset.evals.to_csv(index=False))
    if "csv" in formats:
        put("runs.csv", report.runset.epochs.to_csv(index=False))
        put("routing_runs.csv", report.runset.routing.to_csv(index=False))
        put("per_run.csv", report.runs.to_csv(index=False))
        put("summary.csv", report.summary.to_csv(index=False))
        put("comparison.csv", report.comparison.to_csv(index=False))
        put("warnings.csv", warnings.to_csv(index=False))
        if not report.paper_table1.empty:
            put("table1.csv", report.paper_table1.to_csv(index=False))
        if not report.ensembles.empty:
            put("ensembles.csv", report.ensembles.to_csv(index=False))
    if "md" in formats:
        put("summary.md", _markdown(summary) + "\n")
        put("report.md", report_markdown(report, summary, comparison, figures))
    if "tex" in formats:
        put("summary.tex", _tex(summary))
        put("comparison.tex", _tex(comparison))
        if not report.paper_table1.empty:
            put("table1.tex", _tex(report.paper_table1))
    if "html" in formats:
        put("report.html", report_html(report, summary, comparison, figures))
    return written


EVAL_TITLE = "Accuracy (%) by training r and evaluation r (capsroute evaluate)"


def _markdown(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False) if not frame.empty else "_(none)_"


def _sources(report: Report) -> str:
    runset = report.runset
    return (
        f"{runset.epochs['run'].nunique()} runs used of {runset.found} found; "
        f"swept axes: dataset, r, seed{''.join(', ' + a for a in runset.axes)}. "
        "Cells: mean ± sample std over seeds (n), 95% CI from the t distribution; "
        "pts = percentage points."
    )


def report_markdown(
    report: Report, summary: pd.DataFrame, comparison: pd.DataFrame, figures: list[Path]
) -> str:
    """report.md: findings, tables, warnings and figures (linked, relative to the report)."""
    parts = [
        "# Routing-iteration report",
        _sources(report),
        "## Findings",
        "\n".join(f"- {line}" for line in report.findings),
        "## Summary by dataset and r",
        _markdown(summary),
        "## Each r against the smallest r (paired by seed)",
        _markdown(comparison),
        *(
            part
            for title, frame in paper_sections(report)
            for part in (f"## {title}", _markdown(frame))
        ),
        *(
            [f"## {EVAL_TITLE}", _markdown(eval_display(report))]
            if not report.runset.evals.empty
            else []
        ),
        "## Runs left out",
        _markdown(report.runset.warnings),
        "## Figures",
        "\n\n".join(f"![{p.stem}]({p.relative_to(report.out_dir).as_posix()})" for p in figures),
    ]
    return "\n\n".join(parts) + "\n"


HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border-bottom: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } img { max-width: 100%; display: block; margin: 1em 0; }
"""


def report_html(
    report: Report, summary: pd.DataFrame, comparison: pd.DataFrame, figures: list[Path]
) -> str:
    """report.html: the same content as report.md, figures embedded, no external files."""

    def table(frame: pd.DataFrame) -> str:
        return frame.to_html(index=False, border=0) if not frame.empty else "<p>(none)</p>"

    images = "\n".join(
        f'<h3>{html.escape(p.stem)}</h3><img alt="{html.escape(p.stem)}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in figures
    )
    items = "".join(f"<li>{html.escape(line)}</li>" for line in report.findings)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>Routing-iteration report</title><style>{HTML_STYLE}</style></head><body>\n"
        f"<h1>Routing-iteration report</h1><p>{html.escape(_sources(report))}</p>\n"
        f"<h2>Findings</h2><ul>{items}</ul>\n"
        f"<h2>Summary by dataset and r</h2>{table(summary)}\n"
        f"<h2>Each r against the smallest r (paired by seed)</h2>{table(comparison)}\n"
        + "".join(
            f"<h2>{html.escape(title)}</h2>{table(frame)}\n"
            for title, frame in paper_sections(report)
        )
        + (
            f"<h2>{html.escape(EVAL_TITLE)}</h2>{table(eval_display(report))}\n"
            if not report.runset.evals.empty
            else ""
        )
        + f"<h2>Runs left out</h2>{table(report.runset.warnings)}\n"
        f"<h2>Figures</h2>{images}\n</body></html>\n"
    )


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
        console.print(rich_table(comparison_display(report), "each r vs the smallest r"))
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
