"""Bad input and damaged files through the real `capsroute` entry point (issue 19).

Every case starts from a copy of one tiny completed run (`outputs/runs/base1`, trained once per
module), changes or damages something, runs one command and checks the promise the README's
"When things go wrong" table makes: exit status 2 (1 for runtime failures), at most one line
on stderr that names the problem, no traceback, no code run by the input, and every file of
every run directory that existed before is byte-identical afterwards (`.lock` aside: it is the
lock, rewritten by whoever takes it, not part of the record).

The whole table is `slow` (each case starts a Python process); `FAST` cases, one or two per
class, run in the default suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from capsroute.digest import DIGEST_KEY, content_digest
from tests.cli.test_cli import run_cli
from tests.conftest import TINY_MODEL

RUN = Path("outputs/runs/base1")
CKPT = RUN / "checkpoint.pt"
SUMMARY = RUN / "summary.json"
METRICS = RUN / "metrics.csv"


def base_overrides(data_root: Path) -> list[str]:
    """The config `base1` trained with: 64 images, one epoch, the tiny model."""
    return [
        f"dataset.root={data_root}",
        "dataset.train_size=64",
        "dataset.test_size=64",
        "dataset.train_eval_size=32",
        "train.batch_size=32",
        "train.eval_batch_size=64",
        "train.epochs=1",
        "train.progress=false",
        *TINY_MODEL,
        "run_name=base1",
    ]


@pytest.fixture(scope="module")
def base_root(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """A folder holding one completed tiny run, trained once for the whole module."""
    root = tmp_path_factory.mktemp("base")
    result = run_cli("train", *base_overrides(data_root), cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root


# --- ways to damage or change the copied run -----------------------------------------------


def nothing(root: Path) -> None:
    """Leave the run as it is."""


def rewrite_checkpoint(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Load the checkpoint, change it, and save it with a valid digest (a foreign file)."""

    def damage(root: Path) -> None:
        state = torch.load(root / CKPT, weights_only=True)
        change(state)
        state[DIGEST_KEY] = content_digest(state)
        torch.save(state, root / CKPT)

    return damage


def flip_checkpoint_byte(root: Path) -> None:
    data = bytearray((root / CKPT).read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the weights: the zip still opens
    (root / CKPT).write_bytes(bytes(data))


def truncate(path: Path) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        data = (root / path).read_bytes()
        (root / path).write_bytes(data[: len(data) // 2])

    return damage


def write(path: Path, text: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)

    return damage


def delete(path: Path) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        (root / path).unlink()

    return damage


def edit_summary(**fields: object) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        summary = json.loads((root / SUMMARY).read_text())
        summary.update(fields)
        (root / SUMMARY).write_text(json.dumps(summary))

    return damage


def edit_metrics(column: str, value: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        header, row = (root / METRICS).read_text().splitlines()[:2]
        cells = dict(zip(header.split(","), row.split(","), strict=True))
        cells[column] = value
        (root / METRICS).write_text(header + "\n" + ",".join(cells.values()) + "\n")

    return damage


class Evil:
    """A pickle that would run a shell command when unpickled without `weights_only`."""

    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def malicious_checkpoint(root: Path) -> None:
    torch.save({"format_version": 2, "model": Evil()}, root / CKPT)


def preset(name: str, text: str) -> Callable[[Path], None]:
    return write(Path("presets") / name, text)


def file_in_the_way(root: Path) -> None:
    (root / "afile").write_text("in the way\n")


def sweep_run_with(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    """base1 copied to where `sweep --name s1 --iters 3` puts its run, then damaged."""

    def setup(root: Path) -> None:
        damage(root)
        target = root / "outputs/sweeps/s1/mnist/r3/s0"
        target.parent.mkdir(parents=True)
        shutil.copytree(root / RUN, target)

    return setup


def set_epoch(value: int) -> Callable[[dict], None]:
    return lambda state: state["state"].update(epoch=value)


def shrink_weight(state: dict) -> None:
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name][:1].clone()


def as_baseline(state: dict) -> None:
    state["config"]["model"].update(kind="baseline_cnn", reconstruction=False)


EVIL_FACTORY = (
    "# @package _global_\nhydra:\n  job_logging:\n    handlers:\n      x:\n"
    "        '()': os.system\n"
)
HELD_LOCKS: list = []  # open handles: their flocks last until the test process ends


def hold_lock(root: Path) -> None:
    """Another process trains base1: hold its lock as `run_lock` does."""
    import fcntl

    handle = open(root / RUN / ".lock", "a+")  # noqa: SIM115 (held on purpose)
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    HELD_LOCKS.append(handle)


EVIL_CALLBACK = "# @package _global_\nhydra:\n  callbacks:\n    x:\n      _target_: os.system\n"
EVIL_LAUNCHER = "defaults:\n  - joblib\n  - _self_\n_target_: os.system\n"


# --- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # "BASE" expands to the base run's overrides
    pattern: str  # a part of the one error line
    setup: Callable[[Path], None] = nothing
    code: int = 2


def case(id: str, args: str, pattern: str, setup=nothing, code: int = 2) -> Case:
    return Case(id, tuple(args.split("\t") if "\t" in args else args.split()), pattern, setup, code)


RESUME = "train BASE train.epochs=2"  # resuming base1 loads its checkpoint
SWEEP = "sweep --iters 1 --dry-run --name s0 BASE"
CASES = [
    # 1. a refused or failed command never changes a run's record
    case("1-other-lr", "train BASE train.lr=0.0005", "different config (train.lr"),
    case("1-other-width", "train BASE model.primary_types=8", "different config"),
    case("1-other-seed-same-dir", "train BASE seed=5", "different config (seed"),
    case("1-no-checkpoint", "train BASE", "checkpoint.pt is missing", delete(CKPT)),
    case("1-no-checkpoint-more", RESUME, "checkpoint.pt is missing", delete(CKPT)),
    case("1-locked", "train BASE train.epochs=2", "is in use by", hold_lock),
    # 2. no input runs code
    case(
        "2-logging-factory",
        "train --config-dir presets experiment=evil BASE",
        "logging may use the standard",
        preset("experiment/evil.yaml", EVIL_FACTORY),
    ),
    case(
        "2-callback-preset",
        "train --config-dir presets experiment=evil BASE",
        "is refused",
        preset("experiment/evil.yaml", EVIL_CALLBACK),
    ),
    case(
        "2-callback-preset-sweep",
        "sweep --iters 1 --dry-run --config-dir presets experiment=evil BASE",
        "is refused",
        preset("experiment/evil.yaml", EVIL_CALLBACK),
    ),
    case(
        "2-logging-class",
        "train BASE hydra.job_logging.handlers.file.class=subprocess.Popen",
        "logging may use the standard",
    ),
    case(
        "2-launcher-target",
        "sweep --iters 1 --dry-run --launcher joblib BASE hydra.launcher._target_=os.system",
        "is refused",
    ),
    case(
        "2-launcher-preset",
        "sweep --iters 1 --dry-run --config-dir presets hydra/launcher=mine BASE",
        "is refused",
        preset("hydra/launcher/mine.yaml", EVIL_LAUNCHER),
    ),
    case(
        "2-slurm-parameters",
        "sweep --iters 1 --dry-run --launcher submitit_slurm BASE "
        "+hydra.launcher.additional_parameters={x:{_target_:os.system}}",
        "is refused",
    ),
    case("2-pickle", RESUME, "damaged or not a capsroute checkpoint", malicious_checkpoint),
    # 3. paths that leave or hide the output root
    case("3-empty-out-root", "train BASE out_root=", "out_root is empty"),
    case("3-run-name-dot", "train BASE run_name=.", "one directory name"),
    case("3-run-name-dotdot", "train BASE run_name=..", "one directory name"),
    case("3-run-name-absolute", "train BASE run_name=/tmp/x", "one directory name"),
    case("3-run-name-nested", "train BASE run_name=a/b", "one directory name"),
    case("3-run-name-parent", "info run_name=../../etc", "one directory name"),
    case("3-run-name-newline", "train\trun_name=a\nb", "character the override syntax"),
    case("3-run-name-emoji", "train\trun_name=\U0001f600", "character the override syntax"),
    case("3-sweep-name", "sweep --iters 1 --name ../x", "one directory name"),
    # 5. damaged files are named, with the fix
    case("5-checkpoint-flipped", RESUME, "does not match its sha256", flip_checkpoint_byte),
    case("5-checkpoint-truncated", RESUME, "damaged", truncate(CKPT)),
    case("5-checkpoint-text", RESUME, "damaged", write(CKPT, "not a checkpoint\n")),
    case(
        "5-checkpoint-foreign",
        RESUME,
        "not a usable capsroute checkpoint",
        rewrite_checkpoint(lambda state: state.pop("optimizer")),
    ),
    case("5-checkpoint-negative-epoch", RESUME, "not counts", rewrite_checkpoint(set_epoch(-4))),
    case("5-checkpoint-epoch-rows", RESUME, "not a usable", rewrite_checkpoint(set_epoch(3))),
    case(
        "5-checkpoint-shapes",
        RESUME,
        "weights of another network",
        rewrite_checkpoint(shrink_weight),
    ),
    case(
        "5-evaluate-flipped",
        "evaluate outputs/runs/base1 --iters 1",
        "sha256",
        flip_checkpoint_byte,
    ),
    case("5-viz-flipped", "viz outputs/runs/base1", "sha256", flip_checkpoint_byte),
    case("5-ensemble-flipped", "ensemble outputs/runs", "sha256", flip_checkpoint_byte),
    case("5-summary-garbage", "train BASE", "summary.json is unreadable", write(SUMMARY, "{")),
    case("5-summary-list", "train BASE", "summary.json is unreadable", write(SUMMARY, "[]")),
    case("5-summary-accuracy", "train BASE", "not an accuracy", edit_summary(final_test_acc=2.5)),
    case(
        "5-summary-epochs-text", "train BASE", "not a count", edit_summary(epochs_completed="two")
    ),
    case("5-summary-status", "train BASE", "has status", edit_summary(status=5)),
    case(
        "5-sweep-summary-accuracy",
        "sweep --iters 3 --dry-run --name s1 BASE",
        "not an accuracy",
        sweep_run_with(edit_summary(final_test_acc=2.5)),
    ),
    case(
        "5-sweep-summary-garbage",
        "sweep --iters 3 --dry-run --name s1 BASE",
        "unreadable",
        sweep_run_with(write(SUMMARY, "garbage")),
    ),
    case(
        "5-report-accuracy",
        "report outputs/runs --out rep",
        "not an accuracy",
        edit_summary(final_test_acc=2.5),
    ),
    case(
        "5-report-metrics-text",
        "report outputs/runs --out rep",
        "not numeric",
        edit_metrics("test_loss", "abc"),
    ),
    case(
        "5-report-metrics-inf",
        "report outputs/runs --out rep",
        "non-finite",
        edit_metrics("train_loss", "inf"),
    ),
    case(
        "5-report-metrics-acc",
        "report outputs/runs --out rep",
        "outside [0, 1]",
        edit_metrics("train_eval_acc", "2.5"),
    ),
    # 6. values that cannot work are refused before any work
    case("6-seed-65-bits", "train BASE seed=36893488147419103232", "seed must be in"),
    case("6-seed-negative", "train BASE seed=-1", "seed must be in"),
    case("6-lr-inf", "train BASE train.lr=inf", "train.lr must be a finite number"),
    case("6-lr-nan", "train BASE train.lr=nan", "train.lr must be a finite number"),
    case("6-recon-weight-inf", "train BASE model.recon_weight=inf", "model.recon_weight"),
    case("6-m-plus-nan", "train BASE model.m_plus=nan", "model.m_plus"),
    case("6-temperature-inf", "train BASE routing.temperature=inf", "routing.temperature"),
    case("6-decay-nan", "train BASE train.lr_decay_rate=nan", "train.lr_decay_rate"),
    case("6-conv1-kernel", "train BASE model.conv1_kernel=29", "do not fit the 28x28"),
    case("6-primary-kernel", "train BASE model.primary_kernel=21", "do not fit the 28x28"),
    case("6-crop", "train BASE dataset.crop=40", "dataset.crop=40"),
    case("6-sweep-kernel", "sweep --iters 1 --dry-run model.conv1_kernel=40", "do not fit"),
    case("6-bench-kernel", "bench model.conv1_kernel=40", "do not fit"),
    case("6-lambda-neg", "train BASE model.lambda_neg=-1", "model.lambda_neg"),
    # 7. output problems are found before the work
    case("7-report-out-file", "report outputs/runs --out afile", "cannot write", file_in_the_way),
    case("7-viz-out-file", "viz outputs/runs/base1 --out afile", "cannot write", file_in_the_way),
    case(
        "7-ensemble-out-file", "ensemble outputs/runs --out afile", "cannot write", file_in_the_way
    ),
    case("7-report-out-too-long", "report outputs/runs --out " + "x" * 300, "cannot write"),
    case("7-bench-json-dir", "bench --json outputs", "is a directory"),
    case(
        "7-bench-json-under-file", "bench --json afile/rows.json", "cannot write", file_in_the_way
    ),
    case(
        "7-sweep-root-file",
        "sweep --iters 1 --name s2 out_root=afile BASE",
        "cannot write",
        file_in_the_way,
    ),
    case("7-train-root-file", "train BASE out_root=afile", "cannot write", file_in_the_way),
    # 8. wording
    case("8-jobs-text", "sweep --iters 1 --dry-run --launcher joblib --jobs abc", "--jobs"),
    case("8-steps-text", "bench --steps abc", "'--steps'"),
    case("8-launcher-choices", f"{SWEEP} hydra/launcher=nonexistent", "capsroute_joblib"),
    case(
        "8-yaml-error",
        "train --config-dir presets experiment=bad BASE",
        "bad.yaml line",
        preset("experiment/bad.yaml", "train: {epochs: [1\n"),
    ),
    case(
        "8-evaluate-baseline",
        "evaluate outputs/runs/base1 --iters 1",
        "no routing",
        rewrite_checkpoint(as_baseline),
    ),
    case("8-not-an-override", "train seed", "not an override"),
    case("8-unknown-option", "train --nope", "unknown option"),
    case("8-unknown-key", "train train.nope=1", "unknown config key"),
    case("8-unknown-dataset", "train dataset=nope", "choose one of"),
    case("8-bad-device", "train BASE device=tpu", "unknown device"),
    case("8-sweep-iters", "sweep --iters 0", "--iters"),
    case("8-evaluate-split", "evaluate outputs/runs/base1 --split foo", "split"),
    case("8-evaluate-missing", "evaluate nowhere", "nowhere"),
    case("8-report-missing", "report nowhere", "nowhere"),
    case("8-viz-missing", "viz nowhere", "nowhere"),
]
# One or two per class run in the default suite; the whole table is `slow`.
FAST = {
    "1-other-lr",
    "2-launcher-target",
    "3-run-name-dot",
    "5-checkpoint-flipped",
    "5-summary-accuracy",
    "6-lr-inf",
    "7-report-out-file",
    "8-yaml-error",
}


def run_dir_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file in every run directory under `root/outputs`, `.lock` aside."""
    hashes = {}
    for path in sorted((root / "outputs").rglob("*")):
        if path.is_file() and path.name != ".lock":
            hashes[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def check_case(item: Case, base_root: Path, tmp_path: Path, data_root: Path) -> None:
    root = tmp_path / "work"
    shutil.copytree(base_root, root)
    item.setup(root)
    before = run_dir_hashes(root)
    args = [
        arg
        for token in item.args
        for arg in (base_overrides(data_root) if token == "BASE" else [token])
    ]
    result = run_cli(*args, cwd=root, env={"CAPSROUTE_DATA": str(data_root)})
    assert result.returncode == item.code, (result.returncode, result.stderr[-3000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: ") and item.pattern in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert run_dir_hashes(root) == before
    assert not (root / "pwned").exists()


@pytest.mark.parametrize("item", [c for c in CASES if c.id in FAST], ids=lambda c: c.id)
def test_damaged_input_fast(item: Case, base_root: Path, tmp_path: Path, data_root: Path) -> None:
    check_case(item, base_root, tmp_path, data_root)


@pytest.mark.slow
@pytest.mark.parametrize("item", [c for c in CASES if c.id not in FAST], ids=lambda c: c.id)
def test_damaged_input(item: Case, base_root: Path, tmp_path: Path, data_root: Path) -> None:
    check_case(item, base_root, tmp_path, data_root)


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
