"""The progress bar: off for pipes, one final line, thread-safe counts."""
import io
import threading

from reid_sdk.progress import ProgressBar


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_off_unless_a_terminal_or_forced():
    pipe = io.StringIO()
    with ProgressBar(5, stream=pipe) as bar:
        bar.update(5)
    assert pipe.getvalue() == ""
    tty = _Tty()
    with ProgressBar(5, stream=tty, min_interval=0) as bar:
        bar.update(5)
    assert "5/5" in tty.getvalue()


def test_final_state_is_written_once_and_ends_the_line():
    out = io.StringIO()
    with ProgressBar(3, desc="embed", unit="clips", enabled=True, stream=out,
                     min_interval=0) as bar:
        for _ in range(3):
            bar.update()
    text = out.getvalue()
    assert text.count("3/3 clips") == 1 and text.endswith("\n")
    assert text.count("\n") == 1


def test_close_draws_a_state_that_was_throttled():
    out = io.StringIO()
    with ProgressBar(10, enabled=True, stream=out, min_interval=3600) as bar:
        bar.update(4)   # drawn (first draw)
        bar.update(1)   # throttled
    lines = out.getvalue().split("\r")
    assert "4/10" in lines[1] and "5/10" in lines[2] and lines[2].endswith("\n")


def test_updates_from_threads_add_up():
    bar = ProgressBar(4000, enabled=False)
    threads = [threading.Thread(target=lambda: [bar.update() for _ in range(1000)])
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert bar.done == 4000
