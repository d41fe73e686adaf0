"""The `capsroute` command line: thin wrappers over library functions.

Every command turns its input into a validated config first, so bad input fails before any
work with one line on stderr and exit status 2; runtime failures exit with 1 (130 when
interrupted). `CAPSROUTE_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from capsroute import hydra_app
from capsroute.cli.entry import exit_on_error
from capsroute.cli.options import (
    parse_choice,
    parse_choice_list,
    parse_dataset_list,
    parse_int,
    parse_int_list,
    parse_other_dataset,
    parse_precisions,
    split_overrides,
)
from capsroute.cli.status import status as status_command
from capsroute.config import Config, to_config
from capsroute.errors import ConfigError
from capsroute.io import check_output_dir, check_output_file
from capsroute.run.rundir import CHECKPOINT_FILE, ensure_writable
from capsroute.run.selection import headline_text

EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}
OtherDataset = Annotated[
    str | None,
    typer.Option("--dataset", help="Another test set of the run's shape: affnist, affine_mnist "
                 "(an affNIST approximation), mnist40. evaluate -> RUN_DIR/eval_cross.csv."),
]  # fmt: skip
ConfigDir = Annotated[
    Path | None,
    typer.Option(
        "--config-dir", "-cd", help="Extra config folder searched before the built-in one."
    ),
]

cli = typer.Typer(
    name="capsroute",
    help="Routing-iteration studies on Capsule Networks (Sabour, Frosst & Hinton, 2017).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_cli = typer.Typer(help="Download datasets and check what is on disk.", no_args_is_help=True)
cli.add_typer(data_cli, name="data")
cli.command(name="status", context_settings=EXTRA_ARGS)(status_command)
log = logging.getLogger("capsroute")


@cli.command(context_settings=EXTRA_ARGS)
def train(ctx: typer.Context, config_dir: ConfigDir = None) -> None:
    """Train one CapsNet run: `capsroute train KEY=VALUE ...`, e.g. routing.iterations=5.

    The run directory (default outputs/runs/<dataset>-r<r>-s<seed>) is resumed when it
    holds a checkpoint of the same config; a completed run is not trained again.
    """
    from capsroute.run.guard import check_existing_run

    overrides = split_overrides(ctx.args)
    config = _checked_config(overrides, config_dir)  # before Hydra makes any directory
    run_dir = hydra_app.planned_run_dir(overrides, config_dir)
    existing = check_existing_run(config, run_dir)  # refusals leave the run untouched
    if existing.done:
        typer.echo(existing.message)
        return
    ensure_writable(run_dir)
    # Hydra's `.hydra/` describes the run's first start; it is never rewritten afterwards
    # (the config a run trained with is in its summary.json and checkpoint)
    flags = ["hydra.output_subdir=null"] if existing.has_record else []
    hydra_app.run_hydra(_train_task, [*overrides, *flags], config_dir)


def _checked_config(overrides: list[str], config_dir: Path | None) -> Config:
    """The validated config, with the network's sizes checked against the input images."""
    from capsroute.nn import check_model_fits

    config = hydra_app.load_config(overrides, config_dir)
    check_model_fits(config)
    return config


def _train_task(cfg: DictConfig) -> None:
    """The Hydra task: train into Hydra's output directory."""
    from capsroute.run.train import train_run

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with exit_on_error():
        summary = train_run(to_config(cfg), run_dir)
        log.info("%s: %s, %s", run_dir, summary["status"], headline_text(summary))


@cli.command(context_settings=EXTRA_ARGS)
def sweep(
    ctx: typer.Context,
    iters: Annotated[str | None, typer.Option(help="Routing iterations, e.g. 1,3,5.")] = None,
    datasets: Annotated[
        str | None, typer.Option(help="Comma-separated: mnist,cifar10,multimnist (default mnist).")
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="Seeds, e.g. 0,1,2 (default 0).")] = None,
    name: Annotated[
        str | None, typer.Option(help="Sweep folder under outputs/sweeps/ (default: time).")
    ] = None,
    launcher: Annotated[
        str | None, typer.Option(help="basic | joblib | submitit_local | submitit_slurm.")
    ] = None,
    jobs: Annotated[str | None, typer.Option(help="Runs at once (parallel launchers).")] = None,
    jobs_per_gpu: Annotated[int | None, typer.Option(help="Runs at once on each GPU.")] = None,
    mps: Annotated[bool, typer.Option(help="Packed runs share a GPU through CUDA MPS.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only.")] = False,
    config_dir: ConfigDir = None,
) -> None:
    """Run a routing-iteration grid as a Hydra multirun: `capsroute sweep --iters 1,3,5`.

    Extra key=value overrides apply to every run; Hydra sweep syntax (train.lr=0.001,0.0005)
    adds an axis. Re-running with the same --name skips completed runs and resumes the rest.
    """
    import shlex

    from capsroute.study import sweep as sweeps

    request = sweeps.SweepRequest(
        iters=None if iters is None else parse_int_list(iters, "--iters", 1),
        datasets=None if datasets is None else parse_dataset_list(datasets),
        seeds=None if seeds is None else parse_int_list(seeds, "--seeds", 0),
        name=name,
        launcher=launcher,
        jobs=None if jobs is None else parse_int(jobs, "--jobs", 1),
        jobs_per_gpu=jobs_per_gpu,
        mps=mps,
        overrides=split_overrides(ctx.args),
        config_dir=config_dir,
        dry_run=dry_run,
        command=shlex.join(["capsroute", *sys.argv[1:]]),
    )
    sweeps.sweep(request)


@cli.command(context_settings=EXTRA_ARGS)
def info(
    ctx: typer.Context,
    config_dir: ConfigDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    cfg: Annotated[bool, typer.Option("--cfg", help="Print the resolved config only.")] = False,
) -> None:
    """Resolved config, parameter counts, dataset sizes and device, without training."""
    from capsroute.cli.info import flatten_details, run_info

    overrides = split_overrides(ctx.args)
    composed = hydra_app.compose_config(overrides, config_dir)
    config = to_config(composed)
    from capsroute.nn import check_model_fits

    check_model_fits(config)
    if cfg:
        typer.echo(OmegaConf.to_yaml(composed, resolve=True).rstrip())
        return
    details = run_info(config)
    if as_json:
        typer.echo(json.dumps(details, indent=2))
        return
    console = Console()
    console.print(OmegaConf.to_yaml(composed, resolve=True).rstrip(), highlight=False)
    table = Table(title="capsroute info", show_header=False)
    for key, value in flatten_details(details):
        table.add_row(key, str(value))
    console.print(table)


@cli.command()
def report(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Sweep or run directories, or folders above them (default: newest "
            "sweep under OUT_ROOT/sweeps/); key=value config overrides (out_root=DIR, "
            "report.reference_r=3).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: PATH/report).")
    ] = None,
    formats: Annotated[
        str, typer.Option("--format", help="Comma-separated: md,csv,tex,html.")
    ] = "md,csv,tex,html",
    metric: Annotated[
        str, typer.Option("--metric", help="Headline metric: test_acc or test_error.")
    ] = "test_acc",
    config_dir: ConfigDir = None,
) -> None:
    """Tables, figures and findings for a sweep: what does the number of routing iterations do?

    Runs still running, failed, or with damaged files are listed and left out of the numbers.
    The config (out_root, report.*) is composed as for `capsroute train`.
    """
    from capsroute.report.build import print_report, report_command

    print_report(report_command(paths or [], out, formats, metric, config_dir), Console())


@cli.command()
def evaluate(
    run_dirs: Annotated[
        list[Path] | None,
        typer.Argument(help="Run directories holding checkpoint.pt.", show_default=False),
    ] = None,
    iters: Annotated[
        str, typer.Option("--iters", help="Evaluation r (dynamic routing), e.g. 1,2,3,5,7.")
    ] = "1,2,3,5,7",
    split: Annotated[
        str, typer.Option("--split", help="test | val | train (the fixed train-eval subset).")
    ] = "test",
    device: Annotated[
        str | None, typer.Option("--device", help="Default: the run's own device setting.")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="Default: the run's dataset.root.")
    ] = None,
    dataset: OtherDataset = None,
) -> None:
    """Evaluate trained runs at other routing iterations: RUN_DIR/eval_iters.csv.

    Loads each run's checkpoint and config; at the run's own r (and routing mode) the numbers
    repeat the run's final epoch exactly. `capsroute report` then shows training r x eval r.
    --dataset scores another test set (Section 5.2); `capsroute report` shows the robustness.
    """
    from capsroute.study.eval_r import (
        SPLITS,
        evaluate_runs,
        reproduction_line,
        results_table,
    )

    dataset = parse_other_dataset(dataset, split)

    console = Console(width=None if sys.stdout.isatty() else 120)  # the table is wide
    for result in evaluate_runs(
        run_dirs or [],
        sorted(parse_int_list(iters, "--iters", 1)),
        parse_choice(split, "--split", SPLITS, "split"),
        device,
        data_root,
        dataset,
    ):
        console.print(results_table(result))
        line = reproduction_line(result)
        if line:
            console.print(line, highlight=False)
        console.print(f"wrote {result.run_dir / result.output_file}", highlight=False)


@cli.command(context_settings=EXTRA_ARGS)
def bench(
    ctx: typer.Context,
    iters: Annotated[
        str, typer.Option("--iters", help="Routing iterations, e.g. 1,3,5.")
    ] = "1,3,5",
    batch_size: Annotated[str, typer.Option("--batch-size", help="e.g. 32,128.")] = "32,128",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N, mps.")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="fp32,bf16,fp16.")] = "fp32,bf16",
    steps: Annotated[int, typer.Option("--steps", help="Timed steps (median).")] = 5,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed steps first.")] = 2,
    variants: Annotated[str, typer.Option(help="Train step: eager,graph (CUDA graph).")] = "eager",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the rows here.")] = None,
    config_dir: ConfigDir = None,
) -> None:
    """Time the real train step and inference: ms/step, img/s, peak memory, share of ceiling.

    Extra `key=value` overrides change the model or training config (e.g. train.compile=true).
    Synthetic images: no dataset files are needed.
    """
    from capsroute.study.bench import (
        VARIANTS,
        results_table,
        run_bench,
        write_json,
    )

    overrides = [*split_overrides(ctx.args), f"device={device}"]
    config = _checked_config(overrides, config_dir)
    if json_path is not None:
        check_output_file(json_path, "--json")  # before the timing, not after
    console = Console(width=None if sys.stdout.isatty() else 150)  # the table is wide
    with exit_on_error():
        rows = run_bench(
            config,
            parse_int_list(iters, "--iters", 1),
            parse_int_list(batch_size, "--batch-size", 1),
            parse_precisions(precision),
            steps=steps,
            warmup=warmup,
            variants=parse_choice_list(variants, "--variants", VARIANTS, "variant"),
            progress=lambda row: console.log(
                f"{row.mode} {row.variant} r={row.iters} batch={row.batch_size} {row.precision}: "
                f"{row.ms_per_step:.1f} ms/step"
            ),
        )
        console.print(results_table(rows))
        if json_path is not None:
            write_json(rows, json_path)
            console.print(f"wrote {json_path}")


@cli.command()
def viz(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with checkpoint.pt.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: RUN_DIR/viz).")
    ] = None,
    data_root: Annotated[
        Path | None,
        typer.Option("--data-root", help="Where the data are now (default: the run's own)."),
    ] = None,
    examples: Annotated[
        int, typer.Option("--examples", help="Correct and wrong test images shown, each.")
    ] = 8,
    dataset: OtherDataset = None,
) -> None:
    """The paper's pictures of a trained CapsNet: reconstructions, the 16 capsule dimensions
    perturbed (Fig. 4), and the coupling coefficients after each routing iteration."""
    from capsroute.study.viz import make_figures

    if examples < 1:
        raise ConfigError(f"--examples must be >= 1, got {examples}")
    dataset = parse_other_dataset(dataset)
    with exit_on_error():
        for path in make_figures(run_dir, out, data_root, examples, dataset):
            typer.echo(f"wrote {path}")


@cli.command()
def ensemble(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Run directories, or a sweep (every run with checkpoint.pt below)."),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for ensemble.json (default: the first PATH)."),
    ] = None,
    data_root: Annotated[
        Path | None,
        typer.Option("--data-root", help="Where the data are now (default: the runs' own)."),
    ] = None,
) -> None:
    """Average the class-capsule lengths of several trained runs on their common test set
    (the paper's CIFAR-10 ensemble); `capsroute report` then shows it beside the paper's."""
    from capsroute.run.rundir import find_run_dirs
    from capsroute.study.ensemble import evaluate_ensemble, write_ensemble

    runs = [run for run in find_run_dirs(paths) if (run / CHECKPOINT_FILE).is_file()]
    if not runs:
        raise ConfigError(f"no run with checkpoint.pt under {', '.join(map(str, paths))}")
    check_output_dir(out or paths[0], "--out")  # before the evaluation, not after
    with exit_on_error():
        result = evaluate_ensemble(runs, data_root)
        path = write_ensemble(result, out or paths[0])
        members = ", ".join(f"{100 * error:.2f}%" for error in result.member_errors)
        typer.echo(
            f"{result.models} models on {result.images} test images: ensemble error "
            f"{100 * result.error:.2f}% (members {members}); wrote {path}"
        )


@data_cli.command("download")
def data_download(
    dataset: Annotated[
        str,
        typer.Option(
            help="Comma-separated: mnist,cifar10,fashion_mnist,svhn,smallnorb "
            "(multimnist: its MNIST files)"
        ),
    ] = "mnist,cifar10",
    root: Annotated[
        Path | None, typer.Option(help="Data root (default: $CAPSROUTE_DATA or ./data)")
    ] = None,
) -> None:
    """Download datasets (on a machine with network access, e.g. a login node)."""
    from capsroute.data.files import download

    folder = _data_root(root)
    for name in parse_dataset_list(dataset, "--dataset"):
        download(name, folder)
        typer.echo(f"{name}: ready under {folder}")


@data_cli.command("check")
def data_check(
    root: Annotated[
        Path | None, typer.Option(help="Data root (default: $CAPSROUTE_DATA or ./data)")
    ] = None,
    verify: Annotated[bool, typer.Option(help="Apply torchvision's md5 checks.")] = True,
) -> None:
    """Which datasets are present and loadable under the data root, with image counts."""
    from capsroute.data.files import check

    folder = _data_root(root)
    statuses = check(folder, verify)
    table = Table(title=f"datasets under {folder}")
    for column in ("dataset", "present", "loadable", "train", "test", "note"):
        table.add_column(column)
    for status in statuses:
        table.add_row(
            status.name,
            "yes" if status.present else "no",
            "yes" if status.loadable else "no",
            str(status.train_count or "-"),
            str(status.test_count or "-"),
            status.message,
        )
    Console().print(table)
    if not all(status.loadable for status in statuses):
        raise typer.Exit(1)


def _data_root(root: Path | None) -> Path:
    return Path(root or os.environ.get("CAPSROUTE_DATA") or "data").expanduser().resolve()


def main() -> None:
    """Console-script entry point."""
    from capsroute.cli.entry import run_app

    with exit_on_error():
        run_app(cli)
