"""The report shows a paper_table1 sweep in Table 1's layout, and saved ensembles, beside the
paper's numbers (fixture runs with known errors; no training)."""

from __future__ import annotations

import html
from pathlib import Path

from capsroute import io as capsroute_io
from capsroute.report.build import ENSEMBLE_TITLE, TABLE1_TITLE, make_report
from tests.report.fixtures import metrics_rows, run_config, write_run

# final test error (%) per (r, reconstruction) and seed 0, 1, 2
ERRORS = {(1, False): (0.4, 0.5, 0.6), (3, True): (0.2, 0.3, 0.4)}


def write_table1_sweep(root: Path) -> None:
    for (r, recon), errors in ERRORS.items():
        for seed, error in enumerate(errors):
            config = run_config("mnist", r, seed, 2, **{"model.reconstruction": recon})
            acc = 1 - error / 100
            metrics = metrics_rows([acc - 0.01, acc], [0.99, 0.999], [0.2, 0.1])
            write_run(root / "mnist" / f"r{r}" / f"s{seed}" / f"recon={recon}", config, metrics)


def test_table1_layout_beside_the_paper(tmp_path: Path) -> None:
    write_table1_sweep(tmp_path / "sweep")
    report = make_report([tmp_path / "sweep"], formats=["md", "csv", "tex", "html"])
    table = report.paper_table1
    rows = {(str(r["routing"]), r["reconstruction"]): r for r in table.to_dict("records")}
    assert list(rows) == [("–", "–"), ("1", "no"), ("1", "yes"), ("3", "no"), ("3", "yes")]
    ours, paper = "test error % (ours)", "test error % (paper)"
    assert (rows[("1", "no")]["n"], rows[("1", "no")][ours]) == (3, "0.50 ± 0.100")
    assert (rows[("3", "yes")]["n"], rows[("3", "yes")][ours]) == (3, "0.30 ± 0.100")
    assert rows[("3", "yes")][paper] == "0.25 ± 0.005"
    assert (rows[("1", "yes")]["n"], rows[("1", "yes")][ours]) == (0, "–")
    assert rows[("–", "–")][paper] == "0.39"
    assert rows[("1", "no")]["training"] == "all 60000 images, 2 epochs"
    out = tmp_path / "sweep" / "report"
    markdown = (out / "report.md").read_text()
    assert f"## {TABLE1_TITLE}" in markdown and "0.34 ± 0.032" in markdown
    assert html.escape(TABLE1_TITLE) in (out / "report.html").read_text()
    assert (out / "table1.csv").is_file() and (out / "table1.tex").is_file()
    assert not (out / "ensembles.csv").exists() and ENSEMBLE_TITLE not in markdown


def test_saved_ensemble_gets_its_row(tmp_path: Path) -> None:
    sweep = tmp_path / "cifar"
    for seed in range(2):
        config = run_config("cifar10", 3, seed, 1)
        write_run(sweep / f"s{seed}", config, metrics_rows([0.7], [0.8], [0.3]))
    capsroute_io.write_json(
        sweep / "ensemble.json",
        {"dataset": "cifar10", "images": 1000, "error": 0.25, "member_errors": [0.3, 0.3]},
    )
    report = make_report([sweep], formats=["md"])
    assert report.paper_table1.empty  # no MNIST run: no Table 1
    (row,) = report.ensembles.to_dict("records")
    assert row["ensemble error % (ours)"] == "25.00" and row["models"] == 2
    assert row["ensemble error % (paper)"] == "10.6 (7 models)"
    assert f"## {ENSEMBLE_TITLE}" in (sweep / "report" / "report.md").read_text()


def test_baseline_runs_fill_the_baseline_row_without_routing_figures(tmp_path: Path) -> None:
    for seed, acc in enumerate((0.996, 0.995)):
        config = run_config(
            "mnist", 3, seed, 1, **{"model.kind": "baseline_cnn", "model.reconstruction": False}
        )
        write_run(tmp_path / "cnn" / f"s{seed}", config, metrics_rows([acc], [0.999], [0.02]))
    report = make_report([tmp_path / "cnn"], formats=["md"])
    baseline = report.paper_table1.to_dict("records")[0]
    assert (baseline["method"], baseline["n"]) == ("baseline", 2)
    assert baseline["test error % (ours)"] == "0.45 ± 0.071"
    assert report.runset.routing.empty
    assert not (tmp_path / "cnn" / "report" / "figures" / "routing_entropy.png").exists()
