"""Tuning results on disk: one JSON file per CPU signature, shared by every model compiled here."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from sparsec.tune.signature import cache_dir, cpu_signature, signature_id

log = logging.getLogger("sparsec.tune")
CACHE_FORMAT = 1


class TuneCache:
    """Measurements by shape key for this machine's signature (read once, merged on write)."""

    def __init__(self, directory: Path | None = None, signature: dict[str, Any] | None = None) -> None:
        self.signature = signature or cpu_signature()
        self.path = (directory or cache_dir()) / f"tune-{signature_id(self.signature)}.json"
        self.entries: dict[str, dict[str, Any]] = self._read()
        # After forget(): the keys measured since, the only ones answered (None: all are).
        self._fresh: set[str] | None = None

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:  # a broken cache is re-measured, never fatal
            log.warning("ignoring unreadable tuning cache %s: %s", self.path, e)
            return {}
        if data.get("format") != CACHE_FORMAT or data.get("signature") != self.signature:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> dict[str, Any] | None:
        if self._fresh is not None and key not in self._fresh:
            return None
        return self.entries.get(key)

    def forget(self) -> None:
        """Answer nothing from earlier measurements (`sparsec tune --retune`). Each put still
        merges in what is on disk, so the file keeps other shapes; without this, the first
        put brought every old answer back and only the first shape was measured again."""
        self._fresh = set()

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store and write at once (merging with what another process wrote meanwhile)."""
        self.entries = {**self._read(), **self.entries, key: entry}
        if self._fresh is not None:
            self._fresh.add(key)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = {"format": CACHE_FORMAT, "signature": self.signature, "entries": self.entries}
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tune-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as e:  # a read-only cache only costs re-measuring next time
            log.warning("cannot write tuning cache %s: %s", self.path, e)
