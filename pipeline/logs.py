"""Logging for the CLI and the stages, and progress that shows in a terminal and in a log file alike.

:func:`configure_logging` is called once by the CLI (``--verbose`` / ``--quiet``). :class:`Progress`
draws a tqdm bar on a terminal; when stderr is not a terminal (DVC's log, a CI log, a file, a
Prefect run) it logs one line every ``every`` steps instead, so a long stage is never silent.
"""

from __future__ import annotations

import logging
import sys
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# libraries whose INFO lines drown the stages' own
_NOISY = ("alembic", "mlflow", "httpx", "urllib3", "filelock", "matplotlib", "PIL", "prefect")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(verbosity: int = 0) -> None:
    """-1: warnings only; 0: the stages' info lines; 1: debug lines of the project too."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    root = logging.getLogger()
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    for old in [h for h in root.handlers if getattr(h, "_gaugan", False)]:
        root.removeHandler(old)
    handler._gaugan = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("pipeline", "gaugan"):
        logging.getLogger(name).setLevel(level)
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


class Progress:
    """``with Progress(total, "train", every=10) as bar: bar.update(1, loss=0.3)``.

    A tqdm bar when stderr is a terminal; otherwise an INFO line on ``logger`` every ``every``
    steps and at the end, with the rate and the values given to :meth:`update`.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        every: int = 10,
        initial: int = 0,
        unit: str = "step",
        logger: logging.Logger | None = None,
        enabled: bool = True,
    ):
        self.total, self.desc, self.every, self.unit = total, desc, max(1, every), unit
        self.count = initial
        self.log = logger or logging.getLogger("pipeline")
        self.enabled = enabled
        self._bar = None
        self._started = time.perf_counter()
        self._start_count = initial
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)

    def update(self, n: int = 1, **values: float) -> None:
        self.count += n
        if not self.enabled:
            return
        shown = {k: f"{v:.3f}" if isinstance(v, float) else str(v) for k, v in values.items()}
        if self._bar is not None:
            self._bar.update(n)
            if shown:
                self._bar.set_postfix(shown, refresh=False)
        elif self.count % self.every == 0 or self.count == self.total:
            self._log_line(shown)

    def _log_line(self, shown: dict[str, str]) -> None:
        elapsed = time.perf_counter() - self._started
        rate = (self.count - self._start_count) / max(elapsed, 1e-9)
        eta = (self.total - self.count) / rate if rate > 0 else float("nan")
        extra = "".join(f" {k}={v}" for k, v in shown.items())
        self.log.info(
            "%s %d/%d %ss (%.2f %s/s, %.0f s left)%s",
            self.desc,
            self.count,
            self.total,
            self.unit,
            rate,
            self.unit,
            eta,
            extra,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
