"""The pointer reader refuses every pointer cut short: a kill or a full disk while DVC rewrites a
``.dvc`` file in place leaves a prefix of it, which is often still YAML (``size: 12`` for
``size: 1234``, ``path: fash`` for the partition's name) and would be read as another output."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestion.dvcfiles import DvcFileError, is_complete, parse_dvc_file, read_dvc_file

# as DVC 3.67 writes them (`dvc add`): a partition's pointer and a file output's
POINTERS = {
    "fashion-2026-11-09.dvc": "outs:\n- md5: 3a1f0c9e5b2d4f6a8c0e1b3d5f7a9c1e.dir\n  size: 1234567\n"
                              "  nfiles: 4821\n  hash: md5\n  path: fashion-2026-11-09\n",
    "golden.parquet.dvc": "outs:\n- md5: 0123456789abcdef0123456789abcdef\n  size: 88\n  hash: md5\n"
                          "  path: golden.parquet\n",
}


@pytest.mark.parametrize("name", sorted(POINTERS))
def test_every_prefix_of_a_pointer_is_refused(tmp_path: Path, name: str):
    text = POINTERS[name]
    path = tmp_path / name
    path.write_text(text)
    assert is_complete(path) and read_dvc_file(path).md5 == parse_dvc_file(text).md5
    for cut in range(len(text)):
        path.write_text(text[:cut])
        assert not is_complete(path), f"a pointer cut at {cut} characters read as whole: {text[:cut]!r}"


def test_a_pointer_naming_another_output_is_refused(tmp_path: Path):
    path = tmp_path / "fashion-2026-11-16.dvc"  # a copy under another partition's name
    path.write_text(POINTERS["fashion-2026-11-09.dvc"])
    with pytest.raises(DvcFileError, match="pointer's name says 'fashion-2026-11-16'"):
        read_dvc_file(path)
    assert read_dvc_file(tmp_path / "missing.dvc") is None
