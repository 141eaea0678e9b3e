"""The serving slots as a Prometheus ``file_sd`` targets file, so Prometheus scrapes exactly the
slots that run, whichever of blue and green that is after a rollout.

The local deployer rewrites the file after every slot change (started, failed, stopped); Prometheus
re-reads it on change (``file_sd_configs`` in ``monitoring/prometheus/prometheus.yml``). A slot is
listed while its recorded status is ``starting`` or ``ready``: a slot that crashed stays listed
until something records it stopped or failed (``LocalDeployer.reconcile``), so its ``up`` falls to
0 and ``ServingSlotDown`` fires, instead of the slot silently leaving the scrape.

On ECS nothing writes this file: the slots are ECS services whose tasks change address on every
deployment, and Prometheus discovers them itself (see ``monitoring/README.md``, "Serving slots on
ECS").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping
from urllib.parse import urlsplit

from deploy_ops.state import SlotRecord

#: Statuses whose process should be answering /metrics.
SCRAPED_STATUSES = frozenset({"starting", "ready"})


def target_groups(slots: Iterable[SlotRecord]) -> list[dict]:
    """One file_sd group per scraped slot: its host:port and the slot's name as a label.

    The label is ``slot_name``, not ``slot``: the serving process already labels every series
    ``slot`` and ``model_version`` itself, and a target label of the same name would be renamed
    ``exported_slot`` on the way in."""
    groups = []
    for s in sorted(slots, key=lambda r: r.slot):
        if s.status not in SCRAPED_STATUSES or not s.url:
            continue
        parts = urlsplit(s.url)
        if not parts.hostname or not parts.port:
            continue
        groups.append({"targets": [f"{parts.hostname}:{parts.port}"], "labels": {"slot_name": s.slot}})
    return groups


def write_targets(path: str | os.PathLike[str], slots: Mapping[str, SlotRecord] | Iterable[SlotRecord]) -> Path:
    """Replace ``path`` atomically (write + rename: Prometheus never reads half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = slots.values() if isinstance(slots, Mapping) else slots
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(target_groups(records), indent=2) + "\n")
    os.replace(tmp, path)
    return path
