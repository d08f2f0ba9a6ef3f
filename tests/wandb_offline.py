"""Read what an OFFLINE W&B run recorded, without a server: the run's ``run-<id>.wandb`` file is
a LevelDB-style log (32 KiB blocks of CRC32 | length u16 | type u8 | payload records after a
7-byte header) of ``wandb_internal_pb2.Record`` protobufs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER, RECORD_HEADER = 32768, 7, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    data, pos, payload, out = path.read_bytes(), HEADER, b"", []
    while pos + RECORD_HEADER <= len(data):
        if BLOCK - pos % BLOCK < RECORD_HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + RECORD_HEADER])
        pos += RECORD_HEADER
        payload += data[pos : pos + length]
        pos += length
        if kind in (FULL, LAST):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(payload)
            out.append(rec)
            payload = b""
    return out


def run_info(run_dir: Path) -> dict:
    """``name``, ``group``, ``tags``, ``config`` (top-level keys -> values) and ``summary``
    (the last value of each top-level key) of one offline run directory."""
    (log_file,) = run_dir.glob("run-*.wandb")
    info = {"config": {}, "summary": {}}
    for rec in records(log_file):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            info.update(name=rec.run.display_name, group=rec.run.run_group, tags=list(rec.run.tags))
        elif kind == "config":
            info["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update if u.key})
        elif kind == "summary":
            for u in rec.summary.update:
                key = u.key or "/".join(u.nested_key)
                info["summary"][key] = json.loads(u.value_json)
    return info
