"""Helpers of the tests that interrupt runs (imported by name: `from run_helpers import stop_at_call`)."""


def stop_at_call(k: int):
    """A `track()` progress callback that raises KeyboardInterrupt (a Ctrl-C) on its k-th call, i.e. right after the
    run's k-th write (a frame, or a time point of a 3D+t run; a frame written twice counts twice)."""
    calls = []

    def progress(done, total):
        calls.append(done)
        if len(calls) == k:
            raise KeyboardInterrupt

    return progress
