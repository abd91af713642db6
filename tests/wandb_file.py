"""Read an offline W&B run back from its ``.wandb`` file, with W&B's own record schema.

An offline run's ``run-<id>.wandb`` is W&B's transaction log: what ``wandb sync``
uploads, record for record. wandb 0.31 ships no Python reader for it (the old
``wandb.sdk.internal.datastore`` went with the Python backend; ``wandb-core`` reads
it in Go), so this reads the framing itself and decodes every record with
``wandb.proto.wandb_internal_pb2.Record``, the protobuf schema W&B writes it with.

The framing is LevelDB's log format, as W&B's datastore documented it: a 7-byte
header (``":W&B"``, magic ``0xBEE1``, version), then 32 KiB blocks of chunks, each
``crc32 (uint32) | length (uint16) | type (uint8) | data``, the CRC over the type
byte and the data; types FULL=1, FIRST=2, MIDDLE=3, LAST=4 reassemble records that
span blocks. Every CRC is checked, so a framing error cannot pass silently.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list:
    """Every ``Record`` of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, _ = HEADER.unpack_from(data)
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B transaction log"
    position, pending, found = HEADER.size, b"", []
    while position + CHUNK.size <= len(data):
        left = BLOCK - position % BLOCK
        if left < CHUNK.size:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        crc, length, kind = CHUNK.unpack_from(data, position)
        if (crc, length, kind) == (0, 0, 0):  # zero padding to the end of the block
            position += left
            continue
        payload = data[position + CHUNK.size : position + CHUNK.size + length]
        assert zlib.crc32(bytes([kind]) + payload) == crc, f"bad CRC at byte {position} of {path}"
        position += CHUNK.size + length
        if kind == FULL:
            found.append(payload)
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            found.append(pending + payload)
    parsed = []
    for raw in found:
        record = pb.Record()
        record.ParseFromString(raw)
        parsed.append(record)
    return parsed


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    """What an offline run recorded, replayed from its records."""

    config: dict = field(default_factory=dict)
    config_updates: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # name -> MetricRecord (exact definitions)
    globs: dict = field(default_factory=dict)  # glob name -> MetricRecord
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    artifacts: list = field(default_factory=list)  # ArtifactRecord
    tags: tuple = ()
    exit_code: int | None = None

    def artifact_files(self, kind: str) -> dict[str, set[str]]:
        """``{artifact name: file names}`` of the artifacts of type ``kind``."""
        return {a.name: {entry.path for entry in a.manifest.contents} for a in self.artifacts if a.type == kind}


def read_run(path: str | Path) -> OfflineRun:
    """Replay a ``.wandb`` file: config, metric definitions, final summary, history, artifacts."""
    run = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
            run.tags = tuple(record.run.tags) or run.tags
        elif kind == "config":
            update = {_key(item): json.loads(item.value_json) for item in record.config.update}
            run.config_updates.append(update)
            run.config.update(update)
        elif kind == "metric":
            target = run.metrics if record.metric.name else run.globs
            target[record.metric.name or record.metric.glob_name] = record.metric
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
            for item in record.summary.remove:
                run.summary.pop(_key(item), None)
        elif kind == "history":
            run.history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def offline_run(folder: str | Path) -> OfflineRun:
    """The one offline run under ``folder`` (``<folder>/wandb/offline-run-*/run-*.wandb``)."""
    files = sorted(Path(folder).glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline run under {folder}, found {files}"
    return read_run(files[0])
