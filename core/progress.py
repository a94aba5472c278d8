"""Training progress: steps done out of the planned total, with the rate and the time left (ETA).

On a terminal it is a tqdm bar on stderr; the scripts route loguru's stderr output through `tqdm.write` so log
lines print above the bar instead of through it. When stderr is a file or a pipe (nohup, a job scheduler) a bar
would fill it with carriage returns, so a plain log line is written every `SVC_PROGRESS_INTERVAL` seconds
(default 10) instead; it also lands in the run's log file.
"""
from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import Any

from loguru import logger
from tqdm import tqdm

DEFAULT_INTERVAL_S = 10.0
_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}, ETA {remaining}, {rate_fmt}{postfix}]"


def log_interval() -> float:
    """Seconds between progress log lines: $SVC_PROGRESS_INTERVAL, else 10."""
    raw = os.environ.get("SVC_PROGRESS_INTERVAL", "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        logger.warning(f"SVC_PROGRESS_INTERVAL={raw!r} is not a number of seconds; using {DEFAULT_INTERVAL_S:g}")
        return DEFAULT_INTERVAL_S


def route_logs_through_tqdm() -> None:
    """Replace loguru's default stderr handler (id 0) by one writing through `tqdm.write`, on a terminal only.

    A handler someone else configured is left alone; so is everything when stderr is not a terminal.
    """
    if not sys.stderr.isatty():
        return
    try:
        logger.remove(0)
    except ValueError:
        return
    logger.add(_write_through_tqdm, colorize=True)


def _write_through_tqdm(message: Any) -> None:
    tqdm.write(str(message), file=sys.stderr, end="")


class StepProgress:
    """Counts finished steps towards `total`; a bar on a terminal, periodic log lines elsewhere.

    `done` is the number of steps already finished when the run starts (a resumed run starts part-way).
    A disabled instance (non-zero ranks) shows nothing. Use it as a context manager: leaving the block
    normally logs a last line (log mode) or closes the bar.
    """

    def __init__(self, total: int, done: int, *, desc: str, enabled: bool = True):
        self.total = max(int(total), int(done))
        self.done = int(done)
        self.enabled = enabled
        self.interval = log_interval()
        self.info: dict[str, Any] = {}
        self._started = self._last_line = time.monotonic()
        self._start_done = self._logged_done = self.done
        self._bar = None
        if enabled and sys.stderr.isatty():
            self._bar = tqdm(total=self.total, initial=self.done, desc=desc, unit="step", file=sys.stderr,
                             dynamic_ncols=True, mininterval=0.5, bar_format=_BAR_FORMAT)

    def __enter__(self) -> "StepProgress":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close(finished=kind is None)

    def advance(self, steps: int = 1, **info: Any) -> None:
        """`steps` more finished; `info` (e.g. epoch, loss) is shown beside the counts."""
        self.done += steps
        self.info = info
        if self._bar is not None:
            self._bar.set_postfix(info, refresh=False)
            self._bar.update(steps)
        elif self.enabled and time.monotonic() - self._last_line >= self.interval:
            self._log_line()

    def summary(self) -> str:
        """`7/20 steps (35.0%), 1.52 steps/s, ETA 00:08` over the steps run by this process."""
        elapsed = time.monotonic() - self._started
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done
        eta = tqdm.format_interval(left / rate) if rate > 0 else ("00:00" if left <= 0 else "?")
        percent = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.done}/{self.total} steps ({percent:.1f}%), {rate:.3g} steps/s, ETA {eta}"
        extra = ", ".join(f"{key} {value}" for key, value in self.info.items())
        return f"{text}, {extra}" if extra else text

    def close(self, finished: bool = True) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and finished and self.done != self._logged_done:
            self._log_line()
        self.enabled = False

    def _log_line(self) -> None:
        logger.info(f"progress: {self.summary()}")
        self._last_line = time.monotonic()
        self._logged_done = self.done
