"""Results stay inside the folder chosen for them, and no command writes over its own input.

Input names carry `..`, absolute paths, backslashes, NUL, control characters and hundreds of bytes; each run
happens in a fresh tmp folder, and the whole tmp tree (and the filesystem root) is compared before and after,
so a file written anywhere else is caught.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import run_script
from core.errors import SvcError
from core.outputs import check_output_file, file_in_folder, safe_stem
from tests.tiny_model import SR, add_content_encoder, save_model, tone

pytestmark = pytest.mark.shared

LONG_DIR = "d" * 100
LONG_NAME = "é" * 100 + ".wav"          # 204 bytes; with its folder the -n name is over 300 bytes


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """tmp/<work>: a tiny model, pretrain/, raw/ with oddly named inputs; tmp/abs/x.wav outside it."""
    root = tmp_path_factory.mktemp("paths") / "work"
    root.mkdir()
    save_model(root, "config.json", "G_1.pth")
    add_content_encoder(root)
    raw = root / "raw"
    (raw / LONG_DIR).mkdir(parents=True)
    (raw / "sub").mkdir()
    for name in ("tone.wav", "a\\..\\b.wav", f"{LONG_DIR}/{LONG_NAME}", "sub/x.wav"):
        sf.write(raw / name, tone(1.0), SR)
    (root.parent / "abs").mkdir()
    sf.write(root.parent / "abs" / "x.wav", tone(1.0), SR)
    sf.write(raw / "len_1_sample.wav", np.zeros(1, dtype=np.float32), SR)
    return root


def convert(workdir: Path, *args: str, check: bool = True):
    return run_script("inference_main.py", "-m", "G_1.pth", "-c", "config.json", "-d", "cpu", "-s", "alto",
                      *args, cwd=workdir, check=check)


# ----- the name function ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, stem", [
    ("../raw/tone.wav", "tone.wav"), ("/abs/x.wav", "x.wav"), ("a\\..\\b.wav", "b.wav"), ("sub/x.wav", "x.wav"),
    ("x\0y.wav", "x_y.wav"), ("new\nline\x1b.wav", "new_line_.wav"), (".take.wav", "take.wav"),
    ("..", "audio"), (".", "audio"), ("", "audio"), ("/", "audio"), ("...", "audio"), ("a/..", "a"),
    ("Mañana_歌.wav", "Mañana_歌.wav"),
])
def test_safe_stem_is_one_plain_visible_name(name, stem):
    assert safe_stem(name) == stem


def test_safe_stem_is_bounded_in_bytes_on_a_character_boundary():
    stem = safe_stem("/x/" + "é" * 300)
    assert len(stem.encode("utf-8")) <= 120 and set(stem) == {"é"}


@pytest.mark.parametrize("name", ["../x.wav", "/x.wav", "a/b.wav", "..", ".", "", "x\0.wav", "x" * 240])
def test_the_last_check_before_writing_refuses_anything_but_a_plain_name(tmp_path, name):
    with pytest.raises(SvcError, match="must be one plain file name inside"):
        file_in_folder(tmp_path, name)


# ----- inference_main.py --------------------------------------------------------------------------------

def test_inference_results_stay_in_the_results_folder(workdir):
    before = tree(workdir.parent)
    names = ["../raw/tone.wav", str(workdir.parent / "abs" / "x.wav"), "a\\..\\b.wav", f"{LONG_DIR}/{LONG_NAME}",
             "sub/x.wav"]
    convert(workdir, "-n", *names, "--results_dir", "results/odd")
    written = tree(workdir.parent) - before
    assert all(p.startswith("work/results/odd/") or p in ("work/results", "work/results/odd") for p in written)
    results = sorted(p.name for p in (workdir / "results" / "odd").iterdir())
    suffix = "_0key_alto_sovits_pm_step1.flac"
    long_stem = "é" * 60
    assert results == sorted(["tone.wav" + suffix, "x.wav" + suffix, "b.wav" + suffix, long_stem + suffix,
                              "x.wav_0key_alto_sovits_pm_step1_1.flac"])
    assert not Path("/raw").exists() and not Path("/abs").exists()


def test_an_input_shorter_than_one_frame_is_refused_before_any_result(workdir):
    result = convert(workdir, "-n", "tone.wav", "len_1_sample.wav", "--results_dir", "results/short", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "len_1_sample.wav is too short to convert: 1 sample(s) at 44100 Hz, less than one model frame" \
        in result.stderr
    assert not list((workdir / "results" / "short").iterdir())


# ----- outputs that are inputs ----------------------------------------------------------------------------

def test_an_output_that_is_an_input_is_refused_through_any_link(tmp_path):
    source = tmp_path / "G_100.pth"
    source.write_bytes(b"weights")
    os.symlink(source, tmp_path / "link.pth")
    os.link(source, tmp_path / "hard.pth")
    for output in (source, tmp_path / "link.pth", tmp_path / "hard.pth", tmp_path / "sub" / ".." / "G_100.pth"):
        with pytest.raises(SvcError, match="is the input"):
            check_output_file(output, [source], "-o", overwrite=True)


def test_an_existing_output_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "G_200.pth").write_bytes(b"x")
    (tmp_path / "mine.pth").write_bytes(b"x")
    with pytest.raises(SvcError, match="exists already; choose another path or add --overwrite"):
        check_output_file(tmp_path / "G_200.pth", [tmp_path / "G_100.pth"], "-o", overwrite=False,
                          only_checkpoints=True)
    check_output_file(tmp_path / "mine.pth", [], "-o", overwrite=False, only_checkpoints=True)
    check_output_file(tmp_path / "G_200.pth", [], "-o", overwrite=True)
    with pytest.raises(SvcError, match="exists already"):
        check_output_file(tmp_path / "mine.pth", [], "-o", overwrite=False)


# ----- the web UI ------------------------------------------------------------------------------------------

def test_web_ui_results_take_a_plain_name_and_refuse_a_one_sample_upload(workdir, tmp_path):
    from core.errors import AudioError
    from webui.convert import Converter, ConvertSettings, ModelChoice

    converter = Converter(workdir / "pretrain", tmp_path / "results", device="cpu")
    choice = ModelChoice(workdir / "G_1.pth", workdir / "config.json")
    upload = tmp_path / "up" / "sp\x01ace\\..\\..\\evil.wav"
    upload.parent.mkdir()
    sf.write(upload, tone(1.0), SR)
    before = tree(tmp_path)
    result = converter.convert(choice, ConvertSettings(speaker="alto"), str(upload))
    assert result.path == tmp_path / "results" / "evil_0key_alto.wav"
    assert tree(tmp_path) - before == {"results", "results/evil_0key_alto.wav"}
    short = tmp_path / "up" / "len_1_sample.wav"
    sf.write(short, np.zeros(1, dtype=np.float32), SR)
    with pytest.raises(AudioError, match="len_1_sample.wav is too short to convert"):
        converter.convert(choice, ConvertSettings(speaker="alto"), str(short))
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["evil_0key_alto.wav"]


def test_web_ui_tools_never_write_over_an_input(workdir, tmp_path):
    from webui.tools import compress_model, mix_models

    first, second = tmp_path / "G_1.pth", tmp_path / "G_2.pth"
    for path in (first, second):
        path.write_bytes((workdir / "G_1.pth").read_bytes())
    with pytest.raises(SvcError, match="is the input"):
        mix_models([first, second], [50, 50], "linear", second)
    os.symlink(first, tmp_path / "G_1_release.pth")
    with pytest.raises(SvcError, match="is the input"):
        compress_model(first, workdir / "config.json", half=False)
    assert (workdir / "G_1.pth").read_bytes() == first.read_bytes() == second.read_bytes()


# ----- compress_model.py and mix_model.py ----------------------------------------------------------------

def test_compress_and_mix_refuse_to_replace_their_inputs(workdir, tmp_path):
    checkpoint = tmp_path / "G_1.pth"
    checkpoint.write_bytes((workdir / "G_1.pth").read_bytes())
    os.link(checkpoint, tmp_path / "hard.pth")
    (tmp_path / "G_500.pth").write_bytes(b"a training checkpoint")
    (tmp_path / "mixed.pth").write_bytes(b"an earlier mix")
    original = checkpoint.read_bytes()
    config = workdir / "config.json"
    runs = {
        "is the input": [("compress_model.py", "-c", config, "-i", checkpoint, "-o", checkpoint),
                         ("compress_model.py", "-c", config, "-i", checkpoint, "-o", tmp_path / "hard.pth",
                          "--overwrite"),
                         ("mix_model.py", "-i", checkpoint, tmp_path / "G_500.pth", "-p", "50", "50",
                          "-o", tmp_path / "G_500.pth", "--overwrite")],
        "exists already": [("compress_model.py", "-c", config, "-i", checkpoint, "-o", tmp_path / "G_500.pth"),
                           ("mix_model.py", "-i", checkpoint, checkpoint, "-p", "50", "50",
                            "-o", tmp_path / "mixed.pth")],
    }
    for words, commands in runs.items():
        for script, *args in commands:
            result = run_script(script, *args, cwd=tmp_path, check=False)
            assert result.returncode == 1 and words in result.stderr and "Traceback" not in result.stderr, \
                result.stderr
    assert checkpoint.read_bytes() == original and (tmp_path / "G_500.pth").read_bytes() == b"a training checkpoint"
    assert (tmp_path / "mixed.pth").read_bytes() == b"an earlier mix"
    run_script("compress_model.py", "-c", config, "-i", checkpoint, "-o", tmp_path / "G_500.pth", "--overwrite",
               cwd=tmp_path)
    assert (tmp_path / "G_500.pth").read_bytes() != b"a training checkpoint"


# ----- resample.py and slice_audio.py ----------------------------------------------------------------------

@pytest.mark.parametrize("script, out_flag", [("resample.py", "--out_dir2"), ("slice_audio.py", "--out_dir")])
@pytest.mark.parametrize("in_dir, out_dir, words", [
    ("raw", "raw", "must differ from --in_dir"), ("raw", "raw/spk/out", "lies inside --in_dir"),
    ("data/raw", "data", "lies inside " + "{out}")])
def test_an_output_folder_around_or_inside_the_sources_is_refused(tmp_path, script, out_flag, in_dir, out_dir,
                                                                   words):
    source = tmp_path / in_dir / "spk" / "take.wav"
    source.parent.mkdir(parents=True)
    sf.write(source, tone(1.0), SR)
    original = source.read_bytes()
    before = tree(tmp_path)
    result = run_script(script, "--in_dir", in_dir, out_flag, out_dir, "--force", "--num_processes", "1",
                        cwd=tmp_path, check=False)
    assert result.returncode == 2 and words.format(out=out_flag) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert source.read_bytes() == original and tree(tmp_path) == before


def odd_dataset(root: Path) -> Path:
    """raw/spk/ with a good take, an upper-case extension, a hidden file and a dangling symlink."""
    speaker = root / "raw" / "spk"
    speaker.mkdir(parents=True)
    sf.write(speaker / "take.wav", tone(1.0), SR)
    sf.write(speaker / "UPPER.WAV", tone(1.0), SR)
    sf.write(speaker / ".hidden.wav", tone(1.0), SR)
    os.symlink(root / "gone.wav", speaker / "broken_link.wav")
    return speaker


@pytest.mark.parametrize("script, out_flag, outputs", [
    ("resample.py", "--out_dir2", {"UPPER.wav", "take.wav"}),
    ("slice_audio.py", "--out_dir", {"UPPER_0.wav", "take_0.wav", ".UPPER.slices.json", ".take.slices.json"})])
def test_odd_dataset_files_are_named_with_a_reason(tmp_path, script, out_flag, outputs):
    odd_dataset(tmp_path)
    result = run_script(script, "--in_dir", "raw", out_flag, "out", "--num_processes", "1", "--min_length", "500",
                        cwd=tmp_path, check=False) if script == "slice_audio.py" else \
        run_script(script, "--in_dir", "raw", out_flag, "out", "--num_processes", "1", cwd=tmp_path, check=False)
    log = result.stderr
    assert "Traceback" not in log and "unexpected" not in log, log
    assert "FAILED spk/broken_link.wav: a broken link" in log
    assert "IGNORED spk/.hidden.wav: hidden file (its name starts with '.')" in log
    assert "2 done, 0 already done (skipped), 1 failed, 1 ignored" in log
    assert {p.name for p in (tmp_path / "out" / "spk").iterdir()} == outputs
    if script == "resample.py":
        assert result.returncode == 1 and "1 file(s) failed" in log


@pytest.mark.parametrize("script, out_flag", [("resample.py", "--out_dir2"), ("slice_audio.py", "--out_dir")])
def test_an_output_folder_under_a_file_says_so(tmp_path, script, out_flag):
    sf.write(odd_dataset(tmp_path).parent.parent / "notes.wav", tone(0.1), SR)
    result = run_script(script, "--in_dir", "raw", out_flag, "notes.wav/out", "--num_processes", "1",
                        cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot create folder" in result.stderr and "notes.wav is a file" in result.stderr, result.stderr
