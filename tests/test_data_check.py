"""`bevt data check`: reports every unreadable sample with its reason, writes a clean list; the
full check reads every clip position as training does and compares it with a whole-file decode."""

import numpy as np
import pytest

from bevt.cli import main
from bevt.data import check
from bevt.data.datasets import load_annotations
from bevt.data.synthetic import write_h264
from videos import write_corrupt_avi, write_packed_avi, write_repeated_pts_mkv, write_video


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


# ----------------------------------------------------------------------------------------------
# The full check: every clip position, as training reads it
# ----------------------------------------------------------------------------------------------


def bframe_list(tmp_path) -> str:
    write_video(str(tmp_path / "mpeg4.avi"), 40, "mpeg4", {"bf": "2", "g": "12"})
    write_packed_avi(str(tmp_path / "packed.avi"), 40)
    write_video(str(tmp_path / "h264.mp4"), 40, "libx264", {"bf": "3", "g": "12"})
    write_repeated_pts_mkv(str(tmp_path / "repeated.mkv"), 40)
    listing = tmp_path / "train.txt"
    listing.write_text("mpeg4.avi 0\npacked.avi 1\nh264.mp4 2\nrepeated.mkv 3\n")
    return str(listing)


def test_bframe_videos_pass_every_clip_and_odd_timestamps_are_noted(tmp_path, capsys):
    listing = bframe_list(tmp_path)
    assert main(["data", "check", listing, "--frames", "8", "--interval", "2", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 samples OK" in out and "every clip position" in out
    notes = {line.split(":")[0].strip().rsplit("/", 1)[-1]: line for line in out.splitlines() if "timestamps" in line}
    assert set(notes) == {"packed.avi", "repeated.mkv"}
    assert "out of order" in notes["packed.avi"] and "repeated" in notes["repeated.mkv"]


@pytest.mark.parametrize("swapped", [(3, 4), (33, 34)])  # in the first keyframe's clips, in the last ones
def test_the_check_compares_what_the_reader_gives_with_a_whole_file_decode(tmp_path, capsys, monkeypatch, swapped):
    """A reader that swaps two frames (as the old one did on packed B-frames) is caught, wherever they are."""
    listing = bframe_list(tmp_path)
    real_read = check.read_clip

    def swapping_read(path, choose):
        frames, indices = real_read(path, choose)
        if set(swapped) <= set(indices):
            a, b = indices.index(swapped[0]), indices.index(swapped[1])
            frames[[a, b]] = frames[[b, a]]
        return frames, indices

    monkeypatch.setattr(check, "read_clip", swapping_read)
    assert main(["data", "check", listing, "--frames", "8", "--interval", "2", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "0 of 4 samples OK" in out and f"frame {swapped[0]} read from frame" in out
    assert "differs from a whole-file decode" in out


def test_a_corrupt_stream_is_found_by_the_full_check_and_missed_by_the_fast_probe(tmp_path, capsys):
    write_corrupt_avi(tmp_path / "corrupt.avi", 60, broken=45)
    (tmp_path / "train.txt").write_text("corrupt.avi 0\n")
    args = ["data", "check", str(tmp_path / "train.txt"), "--frames", "8", "--interval", "2", "--workers", "1"]
    assert main([*args, "--fast"]) == 0  # the centred clip (frames 22-36) decodes
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "corrupt.avi: undecodable: decoding the whole stream failed after 45 of 60 frames" in out


def test_recipe_sampler_labels_and_class_count(tmp_path, capsys):
    listing = bframe_list(tmp_path)
    recipe = ["--config", "tiny_finetune", "--workers", "1", f"data.train={listing}", "data.labels=null"]
    assert main(["data", "check", *recipe, "finetune.num_classes=3", "data.sampling=segment"]) == 1
    out = capsys.readouterr().out
    assert "3 of 4 samples OK" in out
    assert f"repeated.mkv: label: label 3 is outside 0..2 (finetune.num_classes=3) ({listing}:4)" in out
    (tmp_path / "classes.txt").write_text("a\nb\nc\nd\ne\n")
    assert main(["data", "check", *recipe, f"data.labels={tmp_path / 'classes.txt'}", "finetune.num_classes=4"]) == 1
    assert "the annotations name 5 classes, but finetune.num_classes=4" in capsys.readouterr().out
    assert main(["data", "check", *recipe, "data.frames=64"]) == 1  # 40-frame videos, 64-frame clips
    assert "too short: 40 frames, need at least 64" in capsys.readouterr().out


def test_an_unwritable_clean_list_fails_before_any_work(tmp_path, capsys):
    listing = make_list(tmp_path, with_bad=False)
    (tmp_path / "a_file").write_text("")
    assert main(["data", "check", listing, "--write-clean", str(tmp_path / "a_file" / "clean.txt")]) == 2
    err = capsys.readouterr().err
    assert f"--write-clean {tmp_path}/a_file/clean.txt: {tmp_path}/a_file is a file, not a folder" in err
    assert "checking" not in err  # no sample was read
