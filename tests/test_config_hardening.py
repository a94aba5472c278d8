"""Flags and configs are refused in one line before any work: bad numbers and devices through the real scripts,
config.json / diffusion.yaml types, ranges, speaker maps, nesting and encodings through the loaders, output
folders under a regular file, the web UI's numbers, and the config readers fuzzed (tests/fuzz.py).

Script refusals are checked as a user sees them: the exit status, one error line holding the message, no
traceback, and no file written in the folder the script ran in.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from core.config import load_diffusion_config, load_model_config, load_speaker_map, load_template, save_config
from core.errors import ConfigError
from inference.spkmix import Timeline, load_timeline
from tests.conftest import REPO, captured_logs, run_script

SPEAKERS = {"alto": 0, "tenor": 1}
DEEP = 200_000  # far past Python's recursion limit: a parser that recurses per level must stop cleanly
TIMELINE = {"alto": [[0, 0.5, 1, 0], [0.5, 1, 0, 1]], "tenor": [[0, 1, 0, 1]]}


def load_two_speaker_timeline(path: str) -> Timeline:
    """The speaker-mix reader as inference calls it, for a model with the speakers alto and tenor (fuzzed)."""
    return load_timeline(path, SPEAKERS)


# ---------------------------------------------------------------- helpers


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}


def run_refused(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `script` in `cwd` and check that it wrote no file there."""
    before = files_under(cwd)
    result = run_script(script, *args, cwd=cwd, check=False, timeout=120)
    assert files_under(cwd) == before, f"{script} wrote {files_under(cwd) - before}"
    return result


def error_lines(stderr: str) -> list[str]:
    """run_cli's logged error lines, and argparse's "prog: error: ..." line."""
    return [line for line in stderr.splitlines() if "| ERROR" in line or ": error: " in line]


def assert_one_line(result: subprocess.CompletedProcess, *phrases: str, code: int = 1) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], f"{phrase!r} not in {lines[0]!r}"


def write_deep_json(path: Path) -> Path:
    path.write_bytes(b"[" * DEEP + b"]" * DEEP)
    return path


def model_config() -> dict[str, Any]:
    config = load_template("config_template.json").to_dict()
    config["spk"] = dict(SPEAKERS)
    return config


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A user's folder: a tiny model's G_1.pth + config.json, raw/song.wav, and spkmix files."""
    import soundfile as sf

    from tests.tiny_model import SR, save_model, tone

    root = tmp_path_factory.mktemp("config_hardening")
    save_model(root, "config.json", "G_1.pth")
    (root / "raw").mkdir()
    sf.write(root / "raw" / "song.wav", tone(1.0), SR)
    write_deep_json(root / "deep.json")
    (root / "notes.txt").write_text("a regular file\n", encoding="utf-8")
    return root


@pytest.fixture
def fuzz_dir(tmp_path) -> Iterator[Path]:
    """Where the fuzzer writes its cases: a RAM folder where there is one (each case is written three times,
    and on this disk a small write costs ~3 ms, 10x the reader), else pytest's tmp_path. The folder is kept
    when the input of a crash is left in it (the report names it)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and shutil.disk_usage(shm).free > 64 << 20):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="config_fuzz_", dir=shm))
    yield folder
    if not any(folder.rglob("case.input")):
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- 1. flags through the real scripts


def convert(workdir: Path, *args: str, config: str = "config.json") -> subprocess.CompletedProcess:
    return run_refused("inference_main.py", "-m", "G_1.pth", "-c", config, "-n", "song.wav", "-s", "alto",
                       *args, cwd=workdir)


@pytest.mark.parametrize("args, phrase", [
    (("-t", "nan"), "argument -t/--trans: must be a finite number, got nan"),
    (("-t", "100"), "-t/--trans 100 is out of range"),
    (("-sd", "100"), "argument -sd/--slice_db: must be in (-100, 0), got 100"),
    (("-ns", "nan"), "argument -ns/--noice_scale: must be a finite number, got nan"),
    (("-lea", "2"), "argument -lea/--loudness_envelope_adjustment: must be in [0, 1], got 2"),
    (("-ft", "-1"), "argument -ft/--f0_filter_threshold: must be >= 0, got -1"),
    (("-eak", "inf"), "argument -eak/--enhancer_adaptive_key: must be a finite number, got inf"),
], ids=["t-nan", "t-100", "sd-100", "ns-nan", "lea-2", "ft-neg", "eak-inf"])
def test_inference_refuses_bad_numbers_while_parsing(workdir, args, phrase):
    assert_one_line(convert(workdir, *args), phrase, code=2)


@pytest.mark.parametrize("args, phrases", [
    (("-d", "bogus"), ("-d/--device 'bogus' is not a device", "choose one of: cpu")),
    (("-d", "cuda"), ("-d/--device 'cuda' is not available here", "choose one of: cpu")),
], ids=["bogus", "cuda"])
def test_inference_refuses_devices_this_machine_lacks(workdir, args, phrases):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert_one_line(convert(workdir, *args), *phrases)


@pytest.mark.parametrize("config, phrase", [
    ("G_1.pth", "config G_1.pth looks like a zip file, like a torch checkpoint (G_*.pth), not a text config"),
    ("deep.json", "cannot parse config deep.json: it is nested too deeply"),
], ids=["checkpoint", "deep"])
def test_inference_refuses_a_config_that_is_no_config(workdir, config, phrase):
    assert_one_line(convert(workdir, "-d", "cpu", config=config), phrase)


def test_inference_refuses_a_deeply_nested_speaker_mix(workdir):
    result = convert(workdir, "-d", "cpu", "-usm", "--spk_mix_file", "deep.json")
    assert_one_line(result, "cannot parse speaker-mix timeline deep.json: it is nested too deeply")


@pytest.mark.parametrize("script, args, phrase", [
    ("specialize.py", ("--in_dir", "raw", "-m", "G_1.pth", "-c", "config.json", "-s", "alto", "-t", "nan"),
     "argument -t/--trans: must be a finite number, got nan"),
    ("download_pretrained.py", ("rmvpe", "--timeout", "0"), "argument --timeout: must be > 0, got 0"),
    ("resample.py", ("--sr2", "1000000000"), "argument --sr2: must be in [8000, 192000], got 1000000000"),
    ("train_cluster.py", ("--n_clusters", "0"), "argument --n_clusters: must be >= 1, got 0"),
], ids=["specialize", "download", "resample", "cluster"])
def test_scripts_refuse_bad_numbers_while_parsing(workdir, script, args, phrase):
    assert_one_line(run_refused(script, *args, cwd=workdir), phrase, code=2)


# ---------------------------------------------------------------- 1. config.json through the loaders


def set_key(path: str, value: Any) -> Callable[[dict], None]:
    def change(config: dict) -> None:
        *parents, last = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value
    return change


@pytest.mark.parametrize("change, phrase", [
    (set_key("model.hidden_channels", "16"), "model.hidden_channels must be an integer, got '16'"),
    (set_key("spk", ["alto", "tenor"]), "spk must be an object mapping speaker names to ids, got a list"),
    (set_key("model", None), "'model' must be an object of keys, got null"),
    (set_key("data.hop_length", 0), "data.hop_length must be at least 1, got 0"),
    (set_key("train.learning_rate", "abc"), "train.learning_rate must be a number, got 'abc'"),
    (set_key("spk.bass", 200), "spk.bass is speaker id 200, but model.n_speakers is 200 (ids must be below it)"),
    (set_key("train.betas", [0.8, math.inf]), "train.betas[1] must be a finite number, got inf"),
    (set_key("model.resblock_dilation_sizes", [[1, 3], [1, 0]]), "model.resblock_dilation_sizes[1][1] must be "
     "at least 1, got 0"),
    (set_key("model.upsample_rates", 8), "model.upsample_rates must be a non-empty list, got 8"),
    (set_key("data.sampling_rate", True), "data.sampling_rate must be an integer, got True"),
], ids=["string-int", "spk-list", "model-null", "hop-0", "lr-text", "spk-beyond-n", "betas-inf", "dilation-0",
        "rates-not-list", "sr-bool"])
def test_a_bad_config_value_is_one_config_error_naming_its_key(tmp_path, change, phrase):
    config = model_config()
    change(config)
    path = write_json(tmp_path / "config.json", config)
    with pytest.raises(ConfigError) as error:
        load_model_config(path, need_train=True)
    assert str(error.value) == f"{path}: {phrase}"


def test_a_config_without_required_keys_or_train_section(tmp_path):
    config = model_config()
    del config["data"]["sampling_rate"]
    with pytest.raises(ConfigError, match=r"data\.sampling_rate is missing$"):
        load_model_config(write_json(tmp_path / "no_sr.json", config))
    config = model_config()
    del config["train"]
    load_model_config(write_json(tmp_path / "no_train.json", config))  # inference needs no train section
    with pytest.raises(ConfigError, match="has no 'train' section"):
        load_model_config(tmp_path / "no_train.json", need_train=True)


@pytest.mark.parametrize("content, phrase", [
    (b"[" * DEEP + b"]" * DEEP, "it is nested too deeply"),
    (b'{"a": ' * DEEP + b"1" + b"}" * DEEP, "it is nested too deeply"),
    ('{"spk": {"alt\u00f6": 0}}'.encode("latin-1"), "is not UTF-8 text (byte 0xf6 at offset 13); save it as UTF-8"),
    (b"PK\x03\x04" + bytes(60), "looks like a zip file, like a torch checkpoint (G_*.pth)"),
    (b'{"data": {"sampling_rate": 44100,', "cannot parse config"),
    (b"[1, 2]", "does not hold a mapping at the top level"),
], ids=["deep-list", "deep-object", "latin-1", "zip", "truncated", "list"])
def test_an_unreadable_config_is_one_config_error(tmp_path, content, phrase):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    for load in (load_model_config, load_speaker_map):
        with pytest.raises(ConfigError) as error:
            load(path)
        assert phrase in str(error.value) and "\n" not in str(error.value)


def test_a_deeply_nested_speaker_mix_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_timeline(write_deep_json(tmp_path / "spkmix.json"), SPEAKERS)
    (tmp_path / "spkmix.py").write_text("spk_mix_map = " + "[" * DEEP + "]" * DEEP + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_timeline(tmp_path / "spkmix.py", SPEAKERS)
    assert "\n" not in str(error.value)


def test_the_speaker_map_alone_is_checked_as_the_config_checks_it(tmp_path):
    config = model_config()
    assert load_speaker_map(write_json(tmp_path / "ok.json", config)) == SPEAKERS
    config["spk"]["bass"] = -1
    with pytest.raises(ConfigError, match=r"spk\.bass must be a speaker id \(an integer >= 0\), got -1"):
        load_speaker_map(write_json(tmp_path / "bad.json", config))


@pytest.mark.parametrize("change, phrase", [
    (set_key("data.block_size", 0), "data.block_size must be at least 1, got 0"),
    (set_key("train.lr", "fast"), "train.lr must be a number, got 'fast'"),
    (set_key("model.n_spk", 1), "spk.nyaru2 is speaker id 1, but model.n_spk is 1 (ids must be below it)"),
], ids=["block-0", "lr-text", "spk-beyond-n"])
def test_a_bad_diffusion_config_value_is_one_config_error(tmp_path, change, phrase):
    config = load_template("diffusion_template.yaml").to_dict()
    config["spk"]["nyaru2"] = 1
    config["model"]["n_spk"] = 2
    change(config)
    path = tmp_path / "diffusion.yaml"
    save_config(config, path)
    with pytest.raises(ConfigError) as error:
        load_diffusion_config(path)
    assert str(error.value) == f"{path}: {phrase}"


# ---------------------------------------------------------------- 2. 4.0 configs and the speech encoder


def test_a_4_0_config_gets_vec256l9_with_a_note(tmp_path):
    config = model_config()
    del config["model"]["speech_encoder"]
    config["model"]["ssl_dim"] = config["model"]["gin_channels"] = 256
    path = write_json(tmp_path / "old.json", config)
    with captured_logs("INFO") as messages:
        loaded = load_model_config(path)
    assert loaded.model.speech_encoder == "vec256l9"
    notes = [m for m in messages if "speech_encoder" in m]
    assert len(notes) == 1 and "using vec256l9 for its ssl_dim 256 (a 4.0 model)" in notes[0], messages


def test_an_encoder_that_disagrees_with_ssl_dim_is_one_config_error(tmp_path):
    config = model_config()
    config["model"]["speech_encoder"], config["model"]["ssl_dim"] = "vec768l12", 256
    with pytest.raises(ConfigError) as error:
        load_model_config(write_json(tmp_path / "mixed.json", config))
    message = str(error.value)
    assert "model.speech_encoder vec768l12 gives 768 features" in message and "model.ssl_dim is 256" in message
    assert "vec256l9" in message and "\n" not in message


def test_a_custom_encoder_width_is_only_warned_about(tmp_path):
    """The tests' tiny ContentVec gives 64 features under the name vec768l12: no known encoder has that width,
    so the weights decide, and loading goes on with a warning."""
    config = model_config()
    config["model"]["ssl_dim"] = 64
    with captured_logs("WARNING") as messages:
        assert load_model_config(write_json(tmp_path / "custom.json", config)).model.ssl_dim == 64
    assert any("model.ssl_dim is 64" in m for m in messages), messages


# ---------------------------------------------------------------- 3. more clusters than frames


def test_a_codebook_file_is_named_for_the_centres_it_holds(tmp_path):
    import torch

    from cluster import load_kmeans, train_cluster_model

    rng = np.random.default_rng(0)
    for speaker, frames in (("alice", 40), ("bob", 25)):
        (tmp_path / "ds" / speaker).mkdir(parents=True)
        torch.save(torch.from_numpy(rng.standard_normal((1, 8, frames)).astype(np.float32)),
                   tmp_path / "ds" / speaker / "a.wav.soft.pt")
    with captured_logs("INFO") as messages:
        path = train_cluster_model(tmp_path / "ds", tmp_path / "logs", n_clusters=100)
    assert path == tmp_path / "logs" / "kmeans_40.pt" and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert {k: tuple(v.shape) for k, v in load_kmeans(path).items()} == {"alice": (40, 8), "bob": (25, 8)}
    assert any("only 25 frames, fewer than --n_clusters 100" in m for m in messages), messages
    wrote = [m for m in messages if m.startswith("wrote")]
    assert len(wrote) == 1 and "kmeans_40.pt" in wrote[0] and "named for the 40 centres it holds" in wrote[0]


# ---------------------------------------------------------------- 4. output folders under a regular file


def tiny_dataset(root: Path) -> None:
    import soundfile as sf

    from tests.tiny_model import SR, tone

    (root / "dataset" / "alto").mkdir(parents=True, exist_ok=True)
    sf.write(root / "dataset" / "alto" / "a.wav", tone(0.5), SR)


@pytest.mark.parametrize("script, args, label", [
    ("train.py", ("-c", "config.json", "-m", "run", "--logs_dir", "notes.txt/logs"),
     "--logs_dir/-m notes.txt/logs/run"),
    ("preprocess_flist_config.py", ("--source_dir", "dataset", "--config_dir", "notes.txt/configs"),
     "--config_dir notes.txt/configs"),
    ("preprocess_flist_config.py", ("--source_dir", "dataset", "--config_dir", "configs", "--train_list",
                                    "notes.txt/lists/train.txt"), "--train_list notes.txt/lists"),
    ("train_cluster.py", ("--dataset", "dataset", "--output", "notes.txt/logs"), "--output notes.txt/logs"),
    ("train_index.py", ("--root_dir", "dataset", "-c", "config.json", "--output_dir", "notes.txt/logs"),
     "--output_dir notes.txt/logs"),
    ("compress_model.py", ("-c", "config.json", "-i", "G_1.pth", "-o", "notes.txt/out/G_1.pth"),
     "-o/--output notes.txt/out"),
    ("download_pretrained.py", ("rmvpe", "--pretrain_dir", "notes.txt/pretrain"), "--pretrain_dir notes.txt/pretrain"),
], ids=["train", "flist-config-dir", "flist-train-list", "cluster", "index", "compress", "download"])
def test_an_output_folder_under_a_file_says_so(workdir, script, args, label):
    tiny_dataset(workdir)
    result = run_refused(script, *args, cwd=workdir)
    assert_one_line(result, f"cannot create folder {label}: notes.txt is a file")


# ---------------------------------------------------------------- 5. the web UI's numbers


def test_the_web_ui_refuses_non_finite_numbers():
    """Every number of the form, trans first: `abs(nan) > 48` is False, so only a finiteness check stops NaN."""
    from webui.convert import NUMBER_RANGES, ConvertSettings, check_settings

    assert "trans" in NUMBER_RANGES and len(NUMBER_RANGES) >= 12
    for field in NUMBER_RANGES:
        for value in (math.nan, math.inf, -math.inf):
            with pytest.raises(ConfigError) as error:
                check_settings(dataclasses.replace(ConvertSettings(speaker="alto"), **{field: value}))
            assert str(error.value) == f"{field} must be a finite number, got {value}"


def test_the_web_ui_refuses_numbers_out_of_range_and_takes_the_defaults():
    from webui.convert import ConvertSettings, check_settings

    check_settings(ConvertSettings(speaker="alto"))
    for field, value, phrase in (("trans", 49.0, "trans must be in [-48, 48], got 49"),
                                 ("slice_db", 0.0, "slice_db must be in (-100, 0), got 0"),
                                 ("k_step", 0, "k_step must be >= 1, got 0"),
                                 ("noice_scale", "0.4", "noice_scale must be a number, got str")):
        with pytest.raises(ConfigError) as error:
            check_settings(dataclasses.replace(ConvertSettings(speaker="alto"), **{field: value}))
        assert str(error.value) == phrase


# ---------------------------------------------------------------- 6. the config readers, fuzzed


def generated_config(folder: Path) -> Path:
    """The template config.json with two speakers, as preprocess_flist_config.py writes it for vec768l12."""
    return write_json(folder / "config.json", model_config())


@pytest.mark.parametrize("mutator, cases, seed", [("json", 2000, 11), ("bytes", 10000, 12)])
def test_fuzz_model_config(tmp_path, fuzz_dir, mutator, cases, seed):
    seeds = [generated_config(tmp_path), REPO / "configs_template" / "config_tiny_template.json"]
    report = fuzz_reader_here("core.config:load_model_config", seeds, cases, seed, mutator, fuzz_dir)
    assert report.ok, report.summary()


def test_fuzz_diffusion_config(fuzz_dir):
    seeds = [REPO / "configs_template" / "diffusion_template.yaml"]
    report = fuzz_reader_here("core.config:load_diffusion_config", seeds, 6000, 13, "bytes", fuzz_dir)
    assert report.ok, report.summary()


@pytest.mark.parametrize("name, text, mutator, cases", [
    ("spkmix.json", json.dumps(TIMELINE, indent=1), "json", 2000),
    ("spkmix.py", f"spk_mix_map = {TIMELINE!r}\n", "bytes", 8000),
], ids=["json", "py"])
def test_fuzz_speaker_mix(tmp_path, fuzz_dir, name, text, mutator, cases):
    seed = tmp_path / name
    seed.write_text(text, encoding="utf-8")
    assert load_two_speaker_timeline(str(seed))  # the seed itself is a valid timeline
    reader = "tests.test_config_hardening:load_two_speaker_timeline"
    report = fuzz_reader_here(reader, [seed], cases, 14, mutator, fuzz_dir)
    assert report.ok, report.summary()


def test_fuzz_specialisation_record(tmp_path, fuzz_dir):
    """workflows.specialise.read_record: a damaged record is redone (None), never a crash of the run."""
    from workflows.specialise import read_record

    record = {"model_sha256": "0f" * 32, "speaker": "alto", "trans": -2.5, "f0_predictor": "rmvpe",
              "speech_encoder": "vec768l12"}
    seed = write_json(tmp_path / "a.wav.specialised.json", record)
    assert read_record(seed) == record
    report = fuzz_reader_here("workflows.specialise:read_record", [seed], 2000, 15, "json", fuzz_dir)
    assert report.ok, report.summary()


def fuzz_reader_here(reader: str, seeds: list[Path], cases: int, seed: int, mutator: str, folder: Path):
    from tests.fuzz import fuzz_reader

    return fuzz_reader(reader, seeds, cases=cases, seed=seed, mutator=mutator, memory_mb=512, case_seconds=10,
                       timeout=120, keep_dir=folder)
