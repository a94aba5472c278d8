"""realtime.py's work: a file streamed block by block, or microphone to speakers through sounddevice
(PortAudio), through a StreamingConverter, with a running report of compute time per block."""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from loguru import logger

from core.errors import SvcError
from inference.streaming import StreamingConverter, StreamSettings

if TYPE_CHECKING:
    from inference.svc import ConversionOptions

REPORT_EVERY_SECONDS = 3.0  # of audio, between two compute reports
KEEP_UP_SHARE = 0.8         # compute above this share of the block length leaves too little headroom


class AudioDeviceError(SvcError):
    """No sound card can be used: PortAudio or sounddevice missing, or a device refused."""


PORTAUDIO_MISSING = ("PortAudio is not installed: on Debian/Ubuntu `apt install libportaudio2` "
                     "(macOS: `brew install portaudio`); or use --input/--output files")


@dataclass
class BlockMonitor:
    """Compute time per block against the block length; logs a summary every few seconds of audio."""

    sample_rate: int
    report_every: float = REPORT_EVERY_SECONDS
    blocks: int = 0
    underruns: int = 0
    late_blocks: int = 0
    compute: list[float] = field(default_factory=list)
    audio_seconds: float = 0.0
    since_report: float = 0.0
    advised: bool = False

    def record(self, n_samples: int, seconds: float, device_underrun: bool = False) -> None:
        """One block of `n_samples` took `seconds` to compute; a block slower than its length is late."""
        block_seconds = n_samples / self.sample_rate
        self.blocks += 1
        self.compute.append(seconds)
        self.audio_seconds += block_seconds
        self.since_report += block_seconds
        self.late_blocks += seconds > block_seconds
        self.underruns += device_underrun or seconds > block_seconds
        if self.since_report >= self.report_every:
            self.report(block_seconds)
            self.since_report = 0.0

    def report(self, block_seconds: float) -> None:
        if not self.compute:
            return
        recent = np.array(self.compute[-max(int(self.report_every / block_seconds), 1):])
        mean, worst = float(recent.mean()), float(recent.max())
        logger.info(f"compute {mean * 1000:.0f} ms per {block_seconds * 1000:.0f} ms block "
                    f"({100 * mean / block_seconds:.0f} %, worst {worst * 1000:.0f} ms); "
                    f"underruns {self.underruns} in {self.blocks} blocks ({self.audio_seconds:.1f} s of audio)")
        if (mean > KEEP_UP_SHARE * block_seconds or self.underruns) and not self.advised:
            self.advised = True
            logger.warning("this machine cannot keep up: use a larger block (--block), a faster f0 predictor "
                           "(-f0p pm or fcpe), less --context or --lookahead, a GPU (-d cuda), or a smaller model")


def stream_settings(args: argparse.Namespace, sample_rate: int) -> StreamSettings:
    return StreamSettings(sample_rate=sample_rate, context_seconds=args.context, lookahead_seconds=args.lookahead,
                          crossfade_seconds=args.crossfade, sola_search_seconds=args.sola_search,
                          silence_threshold_db=args.silence_db)


def stream_array(process: Callable[[np.ndarray], np.ndarray], audio: np.ndarray, block: int,
                 monitor: BlockMonitor, pace: bool = False) -> np.ndarray:
    """Feed `audio` through `process` in blocks of `block` samples; returns the outputs joined.

    `pace` waits between blocks so that they arrive at the rate a sound card would deliver them.
    """
    pieces = []
    started = time.perf_counter()
    for start in range(0, len(audio), block):
        chunk = audio[start:start + block]
        if pace:
            time.sleep(max(started + (start + len(chunk)) / monitor.sample_rate - time.perf_counter(), 0.0))
        began = time.perf_counter()
        pieces.append(process(chunk))
        monitor.record(len(chunk), time.perf_counter() - began)
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


def stream_file(args: argparse.Namespace, converter_for: Callable[[int], StreamingConverter] | None) -> None:
    """--input/--output: the file through the engine block by block, written with the latency removed so that
    it lines up with the input (same rate, same length). `converter_for(rate)` is None with --passthrough."""
    from core.audio import load_audio, write_audio

    audio, sr = load_audio(args.input)
    block = max(int(round(args.block * sr)), 1)
    monitor = BlockMonitor(sr)
    if converter_for is None:
        out = stream_array(lambda chunk: chunk.copy(), audio, block, monitor, pace=args.realtime)
        delay = 0
    else:
        converter = converter_for(sr)
        delay = converter.latency_samples
        padded = np.concatenate([audio, np.zeros(delay, dtype=np.float32)])
        out = stream_array(converter.process, padded, block, monitor, pace=args.realtime)
    monitor.report(block / sr)
    write_audio(args.output, out[delay:delay + len(audio)], sr, subtype=None)
    logger.info(f"{args.input} -> {args.output} ({len(audio) / sr:.1f} s at {sr} Hz, {monitor.blocks} blocks, "
                f"{monitor.late_blocks} slower than real time)")


def import_sounddevice():
    """sounddevice, or one clear error when PortAudio (or the package) is missing."""
    try:
        import sounddevice
    except OSError:
        raise AudioDeviceError(PORTAUDIO_MISSING) from None
    except ImportError:
        raise AudioDeviceError("the sounddevice package is not installed: pip install sounddevice; "
                               "or use --input/--output files") from None
    return sounddevice


def list_devices() -> None:
    print(import_sounddevice().query_devices())


def parse_device(value: str | None) -> int | str | None:
    if value is None or value == "":
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def device_rate(sd, device: int | str | None) -> int:
    try:
        return int(sd.query_devices(device, "input")["default_samplerate"])
    except (ValueError, sd.PortAudioError) as error:
        raise AudioDeviceError(f"input device {device!r}: {error}; see --list_devices") from None


def stream_devices(args: argparse.Namespace, converter_for: Callable[[int], StreamingConverter] | None) -> None:
    """Microphone -> converter -> speakers until Ctrl-C."""
    sd = import_sounddevice()
    input_device, output_device = parse_device(args.input_device), parse_device(args.output_device)
    sr = device_rate(sd, input_device)
    block = max(int(round(args.block * sr)), 1)
    process = (lambda chunk: chunk.copy()) if converter_for is None else converter_for(sr).process
    monitor = BlockMonitor(sr)
    failures: list[Exception] = []

    def callback(indata, outdata, frames, _time, status) -> None:
        began = time.perf_counter()
        try:
            outdata[:, 0] = process(indata[:, 0])
        except Exception as error:  # raised again in the main thread once the stream has stopped
            failures.append(error)
            outdata.fill(0)
            raise sd.CallbackAbort from None
        monitor.record(frames, time.perf_counter() - began, bool(status.output_underflow or status.input_overflow))

    try:
        with sd.Stream(samplerate=sr, blocksize=block, channels=1, dtype="float32",
                       device=(input_device, output_device), callback=callback):
            logger.info(f"streaming at {sr} Hz in blocks of {args.block:g} s; Ctrl-C stops")
            while not failures:
                sd.sleep(200)
    except sd.PortAudioError as error:
        raise AudioDeviceError(f"audio device error: {error}; see --list_devices") from None
    raise failures[0]


def check_stream_args(args: argparse.Namespace):
    """inference/preflight.py's checks that apply to a stream; returns the speaker-mix timeline or None."""
    from inference.preflight import check_auto_f0, check_input, check_model_files, check_pretrained_files, \
        model_facts, prepare_results_dir, resolve_speakers

    facts = model_facts(args)
    if args.input is not None:
        check_input(Path(args.input).parent, Path(args.input).name)
        prepare_results_dir(Path(args.output).parent)
    speakers, timeline = resolve_speakers(args, facts.spk2id)
    check_auto_f0(args, facts)
    check_pretrained_files(args, facts)
    check_model_files(args)
    return timeline


def stream_options(args: argparse.Namespace) -> ConversionOptions:
    from inference.svc import ConversionOptions

    return ConversionOptions(speaker=args.spk_list[0], trans=args.trans, cluster_infer_ratio=args.cluster_infer_ratio,
                             noice_scale=args.noice_scale, f0_predictor=args.f0_predictor,
                             f0_filter_threshold=args.f0_filter_threshold,
                             loudness_envelope_adjustment=args.loudness_envelope_adjustment,
                             cleanup=not getattr(args, "no_cleanup", False),
                             f0_repair=getattr(args, "f0_repair", False))


def converter_factory(args: argparse.Namespace) -> Callable[[int], StreamingConverter]:
    """Check, load the model once, and return `rate -> StreamingConverter`."""
    from inference.preflight import cluster_path
    from inference.svc import Svc

    timeline = check_stream_args(args)
    started = time.perf_counter()
    svc = Svc(args.model_path, args.config_path, device=args.device, cluster_model_path=cluster_path(args),
              feature_retrieval=args.feature_retrieval, pretrain_dir=args.pretrain_dir,
              precision=args.precision)
    logger.info(f"model loaded in {time.perf_counter() - started:.1f} s on {svc.device}")
    options = stream_options(args)

    def converter_for(sample_rate: int) -> StreamingConverter:
        converter = StreamingConverter(svc, options, stream_settings(args, sample_rate), timeline)
        logger.info(f"latency {1000 * converter.latency_samples / sample_rate:.0f} ms + one block "
                    f"({1000 * args.block:.0f} ms) + compute")
        return converter

    return converter_for


def run_realtime(args: argparse.Namespace) -> None:
    """realtime.py's work: list devices, or stream a file or the sound card through the converter."""
    if args.list_devices:
        list_devices()
        return
    if args.input is None:
        import_sounddevice()  # a missing PortAudio is reported before the model loads
    converter_for = None if args.passthrough else converter_factory(args)
    if args.input is not None:
        stream_file(args, converter_for)
    else:
        stream_devices(args, converter_for)
