"""Writing a report's files: markdown, HTML (figures embedded), LaTeX tables and CSVs.

Every file is written atomically; the tables are the text cells of `capsroute.report.tables`,
so the formats show the same numbers.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from capsroute.io import atomic_write_text
from capsroute.report.tables import (
    COMPARISON_TITLE,
    DIAGNOSTICS_TITLE,
    EVAL_TITLE,
    Report,
    comparison_display,
    eval_display,
    paper_sections,
    summary_display,
)

SUMMARY_TITLE = "Summary by dataset and r"
WARNINGS_TITLE = "Runs left out"


def write_outputs(report: Report, formats: Sequence[str], figures: list[Path]) -> list[Path]:
    """Write every file of the requested formats; return their paths."""
    out = report.out_dir
    written: list[Path] = []

    def put(name: str, text: str) -> None:
        atomic_write_text(out / name, text)
        written.append(out / name)

    summary, comparison = summary_display(report), comparison_display(report)
    if "csv" in formats:
        if not report.runset.evals.empty:
            put("evals.csv", report.runset.evals.to_csv(index=False))
        put("runs.csv", report.runset.epochs.to_csv(index=False))
        put("routing_runs.csv", report.runset.routing.to_csv(index=False))
        put("per_run.csv", report.runs.to_csv(index=False))
        put("summary.csv", report.summary.to_csv(index=False))
        put("comparison.csv", report.comparison.to_csv(index=False))
        put("warnings.csv", report.runset.warnings.to_csv(index=False))
        if not report.diagnostics.empty:
            put("diagnostics.csv", report.diagnostics.to_csv(index=False))
        if not report.paper_table1.empty:
            put("table1.csv", report.paper_table1.to_csv(index=False))
        if not report.ensembles.empty:
            put("ensembles.csv", report.ensembles.to_csv(index=False))
        if not report.paper_section7.empty:
            put("section7.csv", report.paper_section7.to_csv(index=False))
        if not report.robustness.empty:
            put("robustness.csv", report.robustness.to_csv(index=False))
    if "md" in formats:
        put("summary.md", _markdown(summary) + "\n")
        put("report.md", report_markdown(report, sections(report), figures))
    if "tex" in formats:
        put("summary.tex", _tex(summary))
        put("comparison.tex", _tex(comparison))
        if not report.paper_table1.empty:
            put("table1.tex", _tex(report.paper_table1))
    if "html" in formats:
        put("report.html", report_html(report, sections(report), figures))
    return written


def sections(report: Report) -> list[tuple[str, pd.DataFrame]]:
    """The report's tables after the findings, in order: (title, display frame)."""
    found = [
        (SUMMARY_TITLE, summary_display(report)),
        (COMPARISON_TITLE, comparison_display(report)),
    ]
    if not report.diagnostics.empty:
        found.append((DIAGNOSTICS_TITLE, report.diagnostics))
    found += paper_sections(report)
    if not report.runset.evals.empty:
        found.append((EVAL_TITLE, eval_display(report)))
    return [*found, (WARNINGS_TITLE, report.runset.warnings)]


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
    report: Report, tables: list[tuple[str, pd.DataFrame]], figures: list[Path]
) -> str:
    """report.md: findings, tables, warnings and figures (linked, relative to the report)."""
    parts = [
        "# Routing-iteration report",
        _sources(report),
        "## Findings",
        "\n".join(f"- {line}" for line in report.findings),
        *(part for title, frame in tables for part in (f"## {title}", _markdown(frame))),
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


def report_html(report: Report, tables: list[tuple[str, pd.DataFrame]], figures: list[Path]) -> str:
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
        + "".join(f"<h2>{html.escape(title)}</h2>{table(frame)}\n" for title, frame in tables)
        + f"<h2>Figures</h2>{images}\n</body></html>\n"
    )


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
