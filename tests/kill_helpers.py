"""A forked child that saves while the parent kills it with SIGKILL (tests/test_kill.py, tests/test_kill_runs.py).

The child logs "s i" when save i starts and "d i" when it ends, through a pipe, so the parent knows which
saves a kill could have left: the last one finished, or the one in progress.
"""
import os
import select
import signal
import time

from minilora.nn.model import GPTConfig

TRIALS = 30                                                      # random kills per kind of save
CFG = GPTConfig(vocab_size=56, block_size=24, n_layer=1, n_head=2, n_embd=16)
TRAIN = dict(steps=24, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=1000, save_every=1, progress=False, workers=2)


class Child:
    """A forked process running ``body(log)``; ``log(text)`` sends one line to the parent."""

    def __init__(self, body):
        r, w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:                                    # the child: never returns into pytest
            code = 1
            try:
                os.close(r)
                _quiet_child()
                body(lambda text: os.write(w, (text + "\n").encode()))
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        self.fd, self.lines, self._buffer = r, [], b""

    def _read(self, timeout) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        chunk = os.read(self.fd, 65536) if ready else b""
        self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\n")
        self.lines += [c.decode() for c in complete]
        return bool(chunk)

    def wait_for(self, line: str, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while line not in self.lines:
            if not self._read(max(0.0, deadline - time.monotonic())) and time.monotonic() > deadline:
                raise TimeoutError(f"the child never logged {line!r}; it logged {self.lines[-5:]}")

    def kill(self):
        os.kill(self.pid, signal.SIGKILL)
        return self.finish()

    def finish(self):
        _, status = os.waitpid(self.pid, 0)
        while self._read(0.5):
            pass
        os.close(self.fd)
        return status

    def progress(self) -> tuple[int | None, int | None]:
        """(last save started, last save done) as the child logged them ("s i" / "d i")."""
        last = lambda tag: max((int(x.split()[1]) for x in self.lines if x.startswith(tag + " ")), default=None)
        return last("s"), last("d")


def _quiet_child():
    """What a forked child must not inherit: the parent's worker threads (gone after fork), output, tqdm's monitor."""
    from tqdm import tqdm

    from minilora.fast import parallel

    parallel._pool, parallel._pool_size = None, 0
    tqdm.monitor_interval = 0
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def leftovers(folder):
    return sorted(n for n in os.listdir(folder.parent) if n.startswith(f".{folder.name}.minilora-"))


def phase(folder) -> str:
    """Where in a save (minilora.io's steps) the kill struck, read from what it left beside the folder."""
    left = " ".join(leftovers(folder))
    if "minilora-old-" in left:
        return "steps 2-3 (between the renames)" if not folder.exists() else "step 4 (old not yet removed)"
    return "step 1 (writing the new files)" if "minilora-partial-" in left else "outside the swap"


def count(stats: dict, phase: str) -> None:
    stats[phase] = stats.get(phase, 0) + 1
