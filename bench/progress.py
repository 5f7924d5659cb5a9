"""A one-line progress display on stderr (a line per step when piped)."""

import sys
import time

# When piped, a long step reports how far it got this often.
PIPED_EVERY_SECONDS = 15.0


class Progress:
    """Shows the step in progress, its fraction done and the elapsed time.

    On a terminal the line is redrawn in place; otherwise each step and
    each note is one line, so logs stay readable.
    """

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.label = ""
        self._last = 0.0

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self.start)
        return "%02d:%02d" % divmod(seconds, 60)

    def step(self, label: str) -> None:
        self.label = label
        self._last = time.monotonic()
        if self.quiet:
            return
        if self.tty:
            self._draw("")
        else:
            print("[%s] %s" % (self._elapsed(), label), file=self.stream,
                  flush=True)

    def update(self, done: float, total: float) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        fraction = done / total if total else 1.0
        if not self.tty:
            if now - self._last >= PIPED_EVERY_SECONDS:
                self._last = now
                print("[%s] %s: %d%%" % (self._elapsed(), self.label,
                                         fraction * 100),
                      file=self.stream, flush=True)
            return
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        bar = "#" * int(fraction * 20)
        self._draw(" [%-20s] %3d%%" % (bar, fraction * 100))

    def note(self, message: str) -> None:
        if self.quiet:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        print("[%s]   %s" % (self._elapsed(), message), file=self.stream,
              flush=True)
        if self.tty:
            self._draw("")

    def done(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def _draw(self, tail: str) -> None:
        self.stream.write("\r\033[K[%s] %s%s" % (self._elapsed(),
                                                  self.label, tail))
        self.stream.flush()
