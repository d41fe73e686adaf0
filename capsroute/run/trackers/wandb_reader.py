"""Read W&B offline run files (`<run_dir>/wandb/offline-run-*/run-<id>.wandb`) without network.

wandb 0.31 has no Python reader (the datastore moved into the Go `wandb-core`); the format is
unchanged: a 7-byte header (`:W&B`, 0xBEE1 LE, version 0), then 32 KiB LevelDB-log blocks of
chunks `crc32(type + data)` u32 LE | length u16 LE | type u8 (FULL/FIRST/MIDDLE/LAST) | data.
Each payload is a `wandb.proto.wandb_internal_pb2.Record`.

An offline resume writes a new `offline-run-<time>-<id>` folder (a segment) instead of
appending, so a run's history is its segments in time order (`read_segments`). The W&B tracker
reads them to find the last epoch already recorded; the tests read them back.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7
MAGIC = b":W&B"
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_payloads(path: Path) -> Iterator[bytes]:
    """Every record's bytes; stops quietly at a truncated tail (a process killed mid-write)."""
    data = path.read_bytes()
    if data[:4] != MAGIC or struct.unpack("<H", data[4:6])[0] != 0xBEE1:
        raise ValueError(f"{path}: not a .wandb file")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - (pos % BLOCK)
        if left < HEADER:  # zero padding at the end of a block
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        if len(chunk) < length:
            break
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: bad checksum at byte {pos}")
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
        else:
            raise ValueError(f"{path}: bad chunk type {kind} at byte {pos}")


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_segment(folder: Path) -> dict[str, Any]:
    """One offline segment: run (id, group, name), config, history rows, summary, files, exit."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = next(folder.glob("run-*.wandb"))
    out: dict[str, Any] = {
        "run": {}, "config": {}, "history": [], "summary": {}, "files": [], "exit_code": None
    }  # fmt: skip
    for payload in iter_payloads(path):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out["run"] = {
                "id": run.run_id, "project": run.project, "group": run.run_group,
                "name": run.display_name,
            }  # fmt: skip
            out["config"].update({_key(i): json.loads(i.value_json) for i in run.config.update})
        elif kind == "config":
            out["config"].update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            out["summary"].update(
                {_key(i): json.loads(i.value_json) for i in record.summary.update}
            )
        elif kind == "files":
            out["files"] += [f.path for f in record.files.files]
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def segment_dirs(wandb_dir: Path, run_id: str) -> list[Path]:
    """The run's offline segments, oldest first (the folder name starts with the time)."""
    return sorted(wandb_dir.glob(f"offline-run-*-{run_id}"))


def read_segments(wandb_dir: Path, run_id: str) -> list[dict[str, Any]]:
    return [read_segment(folder) for folder in segment_dirs(wandb_dir, run_id)]


def last_step(segments: list[dict[str, Any]]) -> int:
    """The highest `_step` any segment holds (0: none)."""
    return max((int(row.get("_step", 0)) for s in segments for row in s["history"]), default=0)
