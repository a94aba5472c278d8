"""The Gradio page of webUI.py: Convert, Tools and Train tabs wired to the handlers of this package.

Every handler runs inside `shown_errors`: an SvcError becomes a message on the page (gr.Error), and an
unexpected exception becomes a one-line message too, its traceback going only to the console log.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from loguru import logger

from core.errors import SvcError, user_message
from webui import catalog
from webui.convert import F0_PREDICTORS, ConvertSettings, Converter, ModelChoice, conversion_summary
from webui.tools import (MIX_MODES, PLAIN_NAME, compress_model, describe_export, export_onnx, mix_models, output_name,
                         train_cluster, train_index)
from webui.training import Jobs, curve_rows, preprocess_commands, train_command, training_status

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]   # no web fonts: the page works offline
MONO_FONTS = ["ui-monospace", "monospace"]
TITLE = "svc web UI"


@dataclass(frozen=True)
class WebSettings:
    """What webUI.py was started with: every folder the page reads or writes (none comes from the browser)."""
    logs_dir: Path = Path("logs")
    pretrain_dir: Path = Path("pretrain")
    results_dir: Path = Path("results")
    dataset_dir: Path = Path("dataset/44k")
    raw_dir: Path = Path("dataset_raw")
    config_dir: Path = Path("configs")
    export_dir: Path = Path("checkpoints")
    device: str | None = None
    precision: str = "auto"  # inference.precision
    max_seconds: float = 600.0


def shown_errors(handler: Callable) -> Callable:
    """Run `handler`; any error reaches the page as one readable line, never as a traceback."""
    import gradio as gr

    @functools.wraps(handler)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except SvcError as error:
            logger.warning(f"web UI: {user_message(error)}")
            raise gr.Error(user_message(error), duration=None, print_exception=False) from None
        except Exception as error:
            logger.exception("web UI: unexpected error")
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            raise gr.Error(f"unexpected error ({type(error).__name__}: {first_line}); the console log has the "
                           "details", duration=None, print_exception=False) from None
    return guarded


def uploaded(file: Any) -> Path | None:
    """The server copy of a gr.File upload (Gradio hands over its own temp path), or None."""
    if not file:
        return None
    return Path(file if isinstance(file, (str, os.PathLike)) else getattr(file, "name", file))


def model_choice(settings: WebSettings, folder_name: str | None, checkpoint: str | None, cluster: str | None,
                 model_file: Any = None, config_file: Any = None, cluster_file: Any = None) -> ModelChoice:
    """The model files the form names: uploads first, else the chosen listed folder's entries."""
    model_upload, config_upload, cluster_upload = uploaded(model_file), uploaded(config_file), uploaded(cluster_file)
    folder = catalog.model_folder(settings.logs_dir, folder_name) if folder_name or not model_upload else None
    if model_upload:
        config = config_upload or (folder / "config.json" if folder else None)
        if config is None:
            raise SvcError("an uploaded model needs its config.json: upload it too, or choose the model folder "
                           "it belongs to")
        return ModelChoice(model_upload, config, cluster_upload)
    return ModelChoice(catalog.checkpoint_in(folder, checkpoint), config_upload or folder / "config.json",
                       cluster_upload or catalog.cluster_in(folder, cluster), catalog.diffusion_files(folder))


def speakers_of(config: Path) -> list[str]:
    from core.config import load_model_config

    return [str(name) for name in load_model_config(config).spk]


def all_checkpoints(logs_dir: Path) -> list[str]:
    """'folder/G_x.pth' for every model folder, for the model mix."""
    return [f"{name}/{file}" for name in catalog.model_folders(logs_dir)
            for file in catalog.generator_checkpoints(Path(logs_dir) / name)]


def listed_checkpoint(logs_dir: Path, entry: str) -> Path:
    folder_name, _, file = entry.partition("/")
    return catalog.checkpoint_in(catalog.model_folder(logs_dir, folder_name), file)


def parse_percentages(text: str, count: int) -> list[float]:
    try:
        values = [float(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise SvcError(f"percentages must be numbers separated by commas, got {text!r}") from None
    if len(values) != count:
        raise SvcError(f"give one percentage per chosen model: {count} models, {len(values)} percentages")
    return values


def build_app(settings: WebSettings):
    """The gr.Blocks of the whole page."""
    import gradio as gr

    converter = Converter(settings.pretrain_dir, settings.results_dir, settings.device, settings.max_seconds,
                          settings.precision)
    jobs = Jobs(Path.cwd())
    folders = catalog.model_folders(settings.logs_dir)
    first = folders[0] if folders else None

    def folder_widgets(name: str | None):
        """Checkpoint, cluster and speaker choices and the diffusion note for a chosen folder."""
        if not name:
            return (gr.update(choices=[], value=None), gr.update(choices=[""], value=""),
                    gr.update(choices=[], value=None), "no model folder chosen")
        folder = catalog.model_folder(settings.logs_dir, name)
        checkpoints = catalog.generator_checkpoints(folder)
        speakers = speakers_of(folder / "config.json")
        diffusion = catalog.diffusion_files(folder)
        note = (f"diffusion model: {diffusion.model.name} (shallow diffusion available)" if diffusion
                else "no diffusion model in this folder (shallow diffusion off)")
        return (gr.update(choices=checkpoints, value=checkpoints[0] if checkpoints else None),
                gr.update(choices=[""] + catalog.cluster_files(folder), value=""),
                gr.update(choices=speakers, value=speakers[0] if speakers else None), note)

    def refresh_folders():
        names = catalog.model_folders(settings.logs_dir)
        return gr.update(choices=names, value=names[0] if names else None)

    def uploaded_config_speakers(config_file):
        if not uploaded(config_file):
            return gr.update()
        speakers = speakers_of(uploaded(config_file))
        return gr.update(choices=speakers, value=speakers[0] if speakers else None)

    def run_conversion(folder, checkpoint, cluster, model_file, config_file, cluster_file, audio, speaker, mix,
                       trans, f0_predictor, auto_f0, cluster_ratio, noise, f0_threshold, slice_db, pad, clip,
                       crossfade, retain, loudness, enhance, enhancer_key, shallow, k_step, second_encoding,
                       cleanup, progress=gr.Progress(track_tqdm=True)):
        choice = model_choice(settings, folder, checkpoint, cluster, model_file, config_file, cluster_file)
        form = ConvertSettings(
            speaker=speaker or "", speaker_mix=mix or "", trans=float(trans), f0_predictor=f0_predictor,
            auto_predict_f0=bool(auto_f0), cluster_infer_ratio=float(cluster_ratio), noice_scale=float(noise),
            f0_filter_threshold=float(f0_threshold), slice_db=float(slice_db), pad_seconds=float(pad),
            clip=float(clip), linear_gradient=float(crossfade), linear_gradient_retain=float(retain),
            loudness_envelope_adjustment=float(loudness), enhance=bool(enhance),
            enhancer_adaptive_key=float(enhancer_key), shallow_diffusion=bool(shallow), k_step=int(k_step),
            second_encoding=bool(second_encoding), cleanup=bool(cleanup))
        result = converter.convert(choice, form, audio, lambda share, what: progress(share, desc=what))
        return str(result.path), conversion_summary(result), result.plot

    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"# {TITLE}\nModels from `{settings.logs_dir}`, pretrained files from "
                    f"`{settings.pretrain_dir}`, results to `{settings.results_dir}`.")
        with gr.Tab("Convert"):
            with gr.Row():
                folder = gr.Dropdown(folders, value=first, label="model folder", elem_id="model-folder")
                checkpoint = gr.Dropdown([], label="checkpoint", elem_id="checkpoint")
                cluster = gr.Dropdown([""], value="", label="cluster model / feature index (optional)")
                refresh = gr.Button("refresh list", size="sm")
            with gr.Accordion("or upload a model", open=False):
                with gr.Row():
                    model_file = gr.File(label="G_<step>.pth", file_types=[".pth"])
                    config_file = gr.File(label="config.json", file_types=[".json"])
                    cluster_file = gr.File(label="kmeans_*.pt or feature_and_index.pkl", file_types=[".pt", ".pkl"])
            diffusion_note = gr.Markdown()
            with gr.Row():
                with gr.Column():
                    audio_in = gr.Audio(sources=["upload", "microphone"], type="filepath", label="input audio",
                                        elem_id="input-audio")
                    with gr.Row():
                        speaker = gr.Dropdown([], label="speaker", elem_id="speaker")
                        mix = gr.Textbox(label="speaker mix (instead of one speaker)", placeholder="alto=0.6, tenor=0.4")
                    with gr.Row():
                        trans = gr.Slider(-24, 24, value=0, step=1, label="transpose (semitones)")
                        f0_predictor = gr.Dropdown(F0_PREDICTORS, value="pm", label="F0 predictor")
                        auto_f0 = gr.Checkbox(label="auto-predict F0 (speech only)")
                    with gr.Row():
                        cluster_ratio = gr.Slider(0, 1, value=0, step=0.05, label="cluster / retrieval ratio")
                        noise = gr.Slider(0, 2, value=0.4, step=0.05, label="noise scale")
                        loudness = gr.Slider(0, 1, value=1, step=0.05,
                                             label="loudness envelope (1: output's, 0: input's)")
                        cleanup = gr.Checkbox(value=True, label="Clean output",
                                              info="remove the DC offset, silence the source's pauses")
                    with gr.Accordion("slicing and F0 filtering", open=False):
                        with gr.Row():
                            slice_db = gr.Slider(-100, 0, value=-40, step=1, label="silence threshold (dB)")
                            pad = gr.Slider(0, 2, value=0.5, step=0.05, label="padding (s)")
                            clip = gr.Slider(0, 60, value=0, step=1, label="forced clip length (s, 0: off)")
                        with gr.Row():
                            crossfade = gr.Slider(0, 5, value=0, step=0.1, label="clip crossfade (s)")
                            retain = gr.Slider(0.05, 1, value=0.75, step=0.05, label="crossfade retain share")
                            f0_threshold = gr.Slider(0, 1, value=0.05, step=0.01, label="F0 filter threshold")
                    with gr.Accordion("enhancer and shallow diffusion", open=False):
                        with gr.Row():
                            enhance = gr.Checkbox(label="NSF-HiFiGAN enhancer")
                            enhancer_key = gr.Slider(-12, 12, value=0, step=1, label="enhancer adaptive key")
                        with gr.Row():
                            shallow = gr.Checkbox(label="shallow diffusion")
                            k_step = gr.Slider(1, 1000, value=100, step=1, label="diffusion k_step")
                            second_encoding = gr.Checkbox(label="second encoding")
                    convert = gr.Button("Convert", variant="primary", elem_id="convert")
                with gr.Column():
                    audio_out = gr.Audio(type="filepath", label="result", interactive=False, buttons=["download"],
                                         elem_id="output-audio")
                    summary = gr.Textbox(label="status", interactive=False, elem_id="convert-status")
                    plot = gr.Image(label="pitch: input (blue) vs output (orange) over the output's spectrogram",
                                    interactive=False, elem_id="pitch-plot")
            folder_outputs = [checkpoint, cluster, speaker, diffusion_note]
            folder.change(shown_errors(folder_widgets), folder, folder_outputs)
            refresh.click(shown_errors(refresh_folders), None, folder)
            config_file.change(shown_errors(uploaded_config_speakers), config_file, speaker)
            app.load(shown_errors(folder_widgets), folder, folder_outputs)
            convert.click(shown_errors(run_conversion),
                          [folder, checkpoint, cluster, model_file, config_file, cluster_file, audio_in, speaker, mix,
                           trans, f0_predictor, auto_f0, cluster_ratio, noise, f0_threshold, slice_db, pad, clip,
                           crossfade, retain, loudness, enhance, enhancer_key, shallow, k_step, second_encoding,
                           cleanup],
                          [audio_out, summary, plot], concurrency_limit=1)
        tools_tab(settings)
        train_tab(settings, jobs)
    return app


def tools_tab(settings: WebSettings) -> None:
    import gradio as gr

    def checkpoint_choices(name):
        if not name:
            return gr.update(choices=[], value=None)
        names = catalog.generator_checkpoints(catalog.model_folder(settings.logs_dir, name))
        return gr.update(choices=names, value=names[0] if names else None)

    def do_mix(entries, percentages, mode, name):
        entries = entries or []
        paths = [listed_checkpoint(settings.logs_dir, entry) for entry in entries]
        if len(paths) < 2:
            raise SvcError("choose at least two checkpoints to mix")
        output = paths[0].parent / output_name(name or "mixed", ".pth")
        mix_models(paths, parse_percentages(percentages, len(paths)), mode, output)
        return str(output), f"mixed model written to {output} (config: {paths[0].parent / 'config.json'})"

    def chosen(name, file) -> tuple[Path, Path]:
        folder = catalog.model_folder(settings.logs_dir, name)
        return catalog.checkpoint_in(folder, file), folder / "config.json"

    def do_compress(name, file, half):
        checkpoint, config = chosen(name, file)
        output, before, after = compress_model(checkpoint, config, bool(half))
        return str(output), f"wrote {output}: {after / 2**20:.1f} MiB (from {before / 2**20:.1f} MiB)"

    def do_export(name, file, plain_sid):
        checkpoint, config = chosen(name, file)
        return describe_export(export_onnx(name, checkpoint, config, settings.export_dir, bool(plain_sid)))

    def do_kmeans(name, n_clusters, minibatch, progress=gr.Progress(track_tqdm=True)):
        folder = catalog.model_folder(settings.logs_dir, name)
        return f"wrote {train_cluster(settings.dataset_dir, folder, int(n_clusters), bool(minibatch))}"

    def do_index(name, progress=gr.Progress(track_tqdm=True)):
        folder = catalog.model_folder(settings.logs_dir, name)
        return f"wrote {train_index(settings.dataset_dir, folder)}"

    def refresh_lists():
        names = catalog.model_folders(settings.logs_dir)
        return (gr.update(choices=all_checkpoints(settings.logs_dir)),
                gr.update(choices=names, value=names[0] if names else None))

    folders = catalog.model_folders(settings.logs_dir)
    with gr.Tab("Tools"):
        refresh = gr.Button("refresh lists", size="sm")
        with gr.Accordion("static model mix", open=True):
            with gr.Row():
                entries = gr.Dropdown(all_checkpoints(settings.logs_dir), multiselect=True, label="checkpoints")
                percentages = gr.Textbox(label="percentages", placeholder="50, 50")
                mode = gr.Radio(list(MIX_MODES), value="convex", label="mode")
                name = gr.Textbox(value="mixed.pth", label="output file (beside the first model)")
            mix_button = gr.Button("Mix")
            with gr.Row():
                mix_file = gr.File(label="mixed model", interactive=False)
                mix_message = gr.Textbox(label="status", interactive=False)
        with gr.Row():
            folder = gr.Dropdown(folders, value=folders[0] if folders else None, label="model folder")
            first_checkpoints = catalog.generator_checkpoints(settings.logs_dir / folders[0]) if folders else []
            checkpoint = gr.Dropdown(first_checkpoints, value=first_checkpoints[0] if first_checkpoints else None,
                                     label="checkpoint")
        with gr.Accordion("compress (release copy)", open=False):
            half = gr.Checkbox(label="float16 weights")
            compress_button = gr.Button("Compress")
            with gr.Row():
                compress_file = gr.File(label="release copy", interactive=False)
                compress_message = gr.Textbox(label="status", interactive=False)
        with gr.Accordion("ONNX export (MoeVoiceStudio)", open=False):
            plain_sid = gr.Checkbox(label="plain speaker id input (CharaMix off)")
            export_button = gr.Button("Export")
            export_message = gr.Textbox(label="files and parity", interactive=False, lines=3)
        with gr.Accordion("cluster model / feature index", open=False):
            gr.Markdown(f"Trained on the features in `{settings.dataset_dir}`, written into the model folder.")
            with gr.Row():
                n_clusters = gr.Number(value=10000, precision=0, label="clusters per speaker")
                minibatch = gr.Checkbox(label="MiniBatchKMeans (faster)")
            with gr.Row():
                kmeans_button = gr.Button("Train k-means")
                index_button = gr.Button("Train feature index")
            cluster_message = gr.Textbox(label="status", interactive=False)
        refresh.click(shown_errors(refresh_lists), None, [entries, folder])
        mix_button.click(shown_errors(do_mix), [entries, percentages, mode, name], [mix_file, mix_message])
        folder.change(shown_errors(checkpoint_choices), folder, checkpoint)
        compress_button.click(shown_errors(do_compress), [folder, checkpoint, half], [compress_file, compress_message])
        export_button.click(shown_errors(do_export), [folder, checkpoint, plain_sid], export_message)
        kmeans_button.click(shown_errors(do_kmeans), [folder, n_clusters, minibatch], cluster_message)
        index_button.click(shown_errors(do_index), folder, cluster_message)


def train_tab(settings: WebSettings, jobs: Jobs) -> None:
    import gradio as gr
    import pandas as pd
    from core.registry import ENCODER_RECORDS

    def run_name(name: str | None) -> str:
        if not name or not PLAIN_NAME.match(name):
            raise SvcError("choose a model folder, or type a new run name (letters, digits, '.', '_', '-')")
        return name

    def status(name):
        state = training_status(settings.logs_dir / run_name(name))
        rows = curve_rows(state)
        return state.summary(), pd.DataFrame(rows or [], columns=["step", "value", "curve"])

    def start_preprocess(encoder, f0_predictor):
        commands = preprocess_commands(settings.raw_dir, settings.dataset_dir, settings.config_dir,
                                       settings.pretrain_dir, encoder, f0_predictor)
        jobs.start("preprocess", commands, settings.logs_dir / "webui_preprocess.log")
        return jobs.tail("preprocess")

    def start_training(name):
        name = run_name(name)
        command = train_command(settings.logs_dir, name, settings.config_dir / "config.json")
        jobs.start("train", [command], settings.logs_dir / name / "webui_train.log")
        return jobs.tail("train")

    def tails():
        return jobs.tail("preprocess"), jobs.tail("train")

    names = catalog.training_folders(settings.logs_dir)
    with gr.Tab("Train"):
        with gr.Row():
            run = gr.Dropdown(names, value=names[0] if names else None, allow_custom_value=True,
                              label=f"model folder in {settings.logs_dir} (or a new run name)")
            status_button = gr.Button("Show status")
        status_text = gr.Textbox(label="status", lines=4, interactive=False)
        curves = gr.LinePlot(x="step", y="value", color="curve", label="losses (TensorBoard)")
        with gr.Row():
            encoder = gr.Dropdown(list(ENCODER_RECORDS), value="vec768l12", label="speech encoder")
            f0_predictor = gr.Dropdown(F0_PREDICTORS, value="rmvpe", label="F0 predictor for features")
        gr.Markdown(f"Preprocessing reads `{settings.raw_dir}` and writes `{settings.dataset_dir}` and "
                    f"`{settings.config_dir}/config.json`; training resumes from the newest G/D pair.")
        with gr.Row():
            preprocess_start = gr.Button("Start preprocessing")
            preprocess_stop = gr.Button("Stop preprocessing")
            train_start = gr.Button("Start / resume training", variant="primary")
            train_stop = gr.Button("Stop training")
        with gr.Row():
            preprocess_log = gr.Textbox(label="preprocessing log (tail)", lines=12, interactive=False)
            train_log = gr.Textbox(label="training log (tail)", lines=12, interactive=False)
        status_button.click(shown_errors(status), run, [status_text, curves])
        preprocess_start.click(shown_errors(start_preprocess), [encoder, f0_predictor], preprocess_log)
        preprocess_stop.click(shown_errors(lambda: jobs.stop("preprocess")), None, preprocess_log)
        train_start.click(shown_errors(start_training), run, train_log)
        train_stop.click(shown_errors(lambda: jobs.stop("train")), None, train_log)
        gr.Timer(3).tick(tails, None, [preprocess_log, train_log])


def serve(settings: WebSettings, host: str, port: int) -> None:
    """Build the page and serve it until Ctrl-C (no share link, no analytics)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    for folder in (settings.results_dir, settings.logs_dir):
        Path(folder).mkdir(parents=True, exist_ok=True)
    app = build_app(settings)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    logger.info(f"web UI on http://{host}:{port}")
    app.queue().launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=False,
                       allowed_paths=[str(Path(p).resolve()) for p in (settings.results_dir, settings.logs_dir,
                                                                          settings.export_dir)],
                       theme=theme, footer_links=[], pwa=False, mcp_server=False, ssr_mode=False)
