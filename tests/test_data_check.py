"""`bevt data check`: reports every unreadable sample with its reason, writes a clean list."""

import numpy as np

from bevt.cli import main
from bevt.data.datasets import load_annotations
from bevt.data.synthetic import write_h264


def make_list(tmp_path, with_bad: bool) -> str:
    rng = np.random.default_rng(0)
    for name in ("ok0.mp4", "ok1.mp4"):
        write_h264(str(tmp_path / name), rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8))
    lines = ["ok0.mp4 0", "ok1.mp4 1"]
    if with_bad:
        (tmp_path / "empty.mp4").write_bytes(b"")
        (tmp_path / "junk.mp4").write_bytes(b"not a video" * 50)
        write_h264(str(tmp_path / "short.mp4"), rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
        lines += ["empty.mp4 2", "missing.mp4 3", "junk.mp4 4", "short.mp4 5"]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "train.txt")


def test_reports_bad_files_and_writes_a_clean_list(tmp_path, capsys):
    listing = make_list(tmp_path, with_bad=True)
    clean = tmp_path / "out" / "clean.txt"
    code = main(["data", "check", listing, "--frames", "8", "--interval", "2", "--workers", "2",
                 "--write-clean", str(clean)])
    out = capsys.readouterr().out
    assert code == 1
    assert "2 of 6 samples OK, 4 unreadable" in out
    for name, reason in [("empty.mp4", "empty: zero bytes"), ("missing.mp4", "missing: no such file"),
                         ("junk.mp4", "undecodable"), ("short.mp4", "too short: 3 frames, need at least 8")]:
        assert any(name in line and reason in line for line in out.splitlines()), (name, out)
    kept = load_annotations(str(clean)).samples  # relative to its own folder
    assert [(s.path, s.label) for s in kept] == [(str(tmp_path / "out/../ok0.mp4"), 0),
                                                 (str(tmp_path / "out/../ok1.mp4"), 1)]


def test_all_readable_exits_zero(tmp_path, capsys):
    assert main(["data", "check", make_list(tmp_path, with_bad=False), "--frames", "8", "--workers", "1"]) == 0
    assert "2 of 2 samples OK, 0 unreadable" in capsys.readouterr().out


def test_bad_annotation_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("ok.mp4 0\nbroken-line\n")
    assert main(["data", "check", str(tmp_path / "train.txt")]) == 2
    assert "train.txt:2: expected '<path> <integer label>'" in capsys.readouterr().err
