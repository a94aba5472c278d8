"""core.errors.run_cli: exit codes, one-line errors, and the collector frozen before the interpreter shuts down."""
from __future__ import annotations

import gc

import pytest
from loguru import logger

from core.errors import AudioError, SvcError, run_cli, user_message


@pytest.fixture
def messages():
    lines: list[str] = []
    sink = logger.add(lines.append, format="{level} {message}")
    yield lines
    logger.remove(sink)
    gc.unfreeze()  # run_cli froze this test process's objects; give them back to the collector


def _exit_code(main) -> int:
    gc.unfreeze()
    with pytest.raises(SystemExit) as exited:
        run_cli(main)
    assert gc.get_freeze_count() > 0  # shutdown's collections will skip the objects that exist now
    return exited.value.code


def test_exit_codes_and_messages(messages):
    assert _exit_code(lambda: None) == 0
    assert _exit_code(lambda: 3) == 3

    def fails():
        raise AudioError("song.wav is silent")

    def interrupted():
        raise KeyboardInterrupt

    assert _exit_code(fails) == 1
    assert _exit_code(interrupted) == 130
    assert [line.strip() for line in messages] == ["ERROR song.wav is silent", "WARNING interrupted"]


def test_other_errors_keep_their_traceback():
    with pytest.raises(ValueError):
        run_cli(lambda: int("x"))


def test_user_message_of_a_dataloader_worker_error():
    text = ("Caught SvcError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            "  File \"x.py\", line 1\ncore.errors.SvcError: a.wav is too short")
    assert user_message(SvcError(text)) == "a.wav is too short"
    assert user_message(SvcError("  plain  ")) == "plain"
