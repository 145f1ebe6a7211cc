"""The batch manifest is updated per batch: one entry written, the others untouched; a manifest
written as one file by an earlier version reads back the same, split into entries."""

from __future__ import annotations

import json
import os

from ingestion.manifest import entries_dir, read_manifest, update_entries, update_entry

REPORT = {"accepted_rows": 3, "rejected_rows": 1, "reasons": {"image_corrupt": 1}, "rows": ["x" * 100] * 50}


def _stamps(folder):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_updating_a_batch_writes_its_entry_only(tmp_path):
    path = tmp_path / "manifest.json"
    batches = [f"fashion-2026-{m:02d}-01" for m in range(1, 13)]
    update_entries(path, {b: {"status": "staged", "ingested_at": "2026-11-02T00:00:00+00:00"} for b in batches})
    update_entries(path, {b: {"status": "accepted", "report": REPORT, "data_rev": None} for b in batches})
    before = _stamps(entries_dir(path))
    assert len(before) == len(batches)

    update_entry(path, "fashion-2027-01-04", status="staged", ingested_at="2027-01-04T00:00:00+00:00")
    update_entry(path, batches[3], data_rev="abc")
    after = _stamps(entries_dir(path))
    rewritten = {name for name in after if before.get(name) != after[name]}
    assert rewritten == {"fashion-2027-01-04.json", f"{batches[3]}.json"}, rewritten

    manifest = read_manifest(path)
    assert manifest[batches[3]] == {"status": "accepted", "ingested_at": "2026-11-02T00:00:00+00:00",
                                    "report": REPORT, "data_rev": "abc"}
    assert manifest["fashion-2027-01-04"]["status"] == "staged" and len(manifest) == 13
    assert not path.exists()


def test_a_single_file_manifest_is_split_on_first_read(tmp_path):
    path = tmp_path / "manifest.json"
    legacy = {"b-2026-11-02": {"status": "accepted", "report": REPORT, "data_rev": "f00"},
              "b-2026-11-09": {"status": "staged"}}
    path.write_text(json.dumps(legacy, indent=2))
    assert read_manifest(path) == legacy
    assert not path.exists() and len(list(entries_dir(path).iterdir())) == 2
    assert update_entry(path, "b-2026-11-09", status="partial") == {"status": "partial"}
    assert read_manifest(path) == {**legacy, "b-2026-11-09": {"status": "partial"}}


def test_any_batch_id_is_a_safe_file_name(tmp_path):
    path = tmp_path / "state" / "manifest.json"
    odd = ["../../etc/passwd", "a/b", ".hidden", "", "x" * 300, "new\nline", "caf\u00e9", "bad\udcff"]
    update_entries(path, {b: {"status": "quarantined", "stage": "ingest"} for b in odd})
    assert set(read_manifest(path)) == set(odd)
    names = os.listdir(entries_dir(path))
    assert len(names) == len(odd) and all("/" not in n and "\n" not in n and not n.startswith(".") for n in names)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["manifest.d"]
