"""Chunks of several files through shared model calls (``SharedCalls``,
``Separator.separate_files``, ``demix separate --files-together``): the same stems as one
file at a time, failures kept to their file, calls shared."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_cli import _command, _env

from demix import Separator
from demix.demo import demo_clip
from demix.separate import BatchCancelled, SharedCalls

RATE = 44100


def _run_threads(target, count: int) -> list:
    results: list = [None] * count
    errors: list = []

    def run(i: int) -> None:
        try:
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return results if not errors else [errors]


def test_shared_calls_fill_batches_and_return_each_its_rows():
    sizes: list[int] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        sizes.append(x.shape[0])
        return x * 2 + 1

    # Four threads, three single-row requests each, up to four rows a call, a long wait:
    # every call waits until all four are queued, so exactly three calls of four rows.
    calls = SharedCalls(fn, max_signals=4, streams=4, max_wait_seconds=30.0)

    def stream(i: int) -> list[torch.Tensor]:
        out = []
        for k in range(3):
            out.append(calls(torch.full((1, 5), float(10 * i + k))))
        calls.leave()
        return out

    results = _run_threads(stream, 4)
    for i, outs in enumerate(results):
        for k, y in enumerate(outs):
            assert torch.equal(y, torch.full((1, 5), 2.0 * (10 * i + k) + 1)), (i, k)
    assert sizes == [4, 4, 4] and calls.calls == 3 and calls.rows == 12


def test_shared_calls_do_not_wait_for_a_stream_that_left():
    sizes: list[int] = []
    calls = SharedCalls(lambda x: (sizes.append(x.shape[0]), x)[1], 8, streams=3,
                        max_wait_seconds=30.0)  # fmt: skip
    calls.leave()  # one stream had nothing to do
    calls.leave()  # ... nor another: the last one's request goes at once
    assert torch.equal(calls(torch.ones(2, 3)), torch.ones(2, 3)) and sizes == [2]


def test_shared_calls_group_by_shape_and_pass_failures_to_their_requests():
    seen: list[tuple[int, ...]] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        if x.shape[-1] == 7:
            raise ValueError("bad length")
        return x

    calls = SharedCalls(fn, 4, streams=2, max_wait_seconds=0.01)

    def stream(i: int):
        try:
            return calls(torch.zeros(1, 7 if i else 4))
        except ValueError as exc:
            return exc
        finally:
            calls.leave()

    short, bad = _run_threads(stream, 2)
    assert short.shape == (1, 4) and isinstance(bad, ValueError)
    assert sorted(seen) == [(1, 4), (1, 7)]  # never one call of two shapes


def test_cancel_wakes_the_waiting_streams():
    calls = SharedCalls(lambda x: x, 4, streams=2, max_wait_seconds=30.0)
    outcome: list = []

    def wait() -> None:
        try:
            calls(torch.zeros(1, 2))
        except BatchCancelled as exc:
            outcome.append(str(exc))

    t = threading.Thread(target=wait)
    t.start()
    calls.cancel("interrupted")
    t.join(timeout=10)
    assert not t.is_alive() and outcome == ["interrupted"]
    with pytest.raises(BatchCancelled):
        calls(torch.zeros(1, 2))


def _clips(folder: Path, seconds: tuple[float, ...]) -> list[Path]:
    paths = []
    for i, s in enumerate(seconds):
        mix, _ = demo_clip(s, RATE, seed=i)
        path = folder / f"clip{i}.wav"
        sf.write(path, mix.T, RATE, subtype="FLOAT")
        paths.append(path)
    return paths


def _stems(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): sf.read(p, dtype="float32")[0]
            for p in sorted(folder.rglob("*.wav"))}  # fmt: skip


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_files_together_equal_one_at_a_time(tiny_checkpoint, tmp_path, backend, monkeypatch):
    monkeypatch.setenv("DEMIX_CACHE", str(tmp_path / "cache"))
    # Shorter than one 2-s chunk, one chunk and a bit, and several chunks.
    inputs = _clips(tmp_path, (0.7, 1.3, 2.5, 5.0))
    sep = Separator.from_pretrained(str(tiny_checkpoint), backend=backend, batch_size=4)
    rows: list[int] = []
    model = sep.model
    sep.model = _Counting(model, rows)
    results = {}
    for together in (1, 3):
        out = tmp_path / f"out{together}"
        rows.clear()
        outcomes = list(sep.separate_files([(p, out) for p in inputs], head="both",
                                           files_together=together, fmt="wav",
                                           bit_depth="32f"))  # fmt: skip
        assert [o.error for o in outcomes] == [None] * 4
        assert sorted(o.path for o in outcomes) == sorted(inputs)
        results[together] = (_stems(out), list(rows))
    (alone, rows_alone), (shared, rows_shared) = results[1], results[3]
    assert alone.keys() == shared.keys() and len(alone) == 4 * 9
    for name in alone:
        np.testing.assert_allclose(shared[name], alone[name], atol=1e-5, rtol=0, err_msg=name)
    assert sum(rows_alone) == sum(rows_shared)  # the same chunks, differently grouped
    assert max(rows_shared) <= 4 and sep._shared is None


class _Counting:
    """The model, recording how many signals each call carries."""

    def __init__(self, model, rows: list[int]):
        self._model, self._rows = model, rows

    def __call__(self, x, **kwargs):
        self._rows.append(x.shape[0])
        return self._model(x, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def test_cli_files_together_keeps_going_past_a_bad_file(tiny_checkpoint, tmp_path):
    inputs = _clips(tmp_path, (0.8, 1.5, 3.0))
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    args = [*inputs[:2], bad, inputs[2]]
    runs = {}
    for together in ("1", "3"):
        out = tmp_path / f"stems{together}"
        run = subprocess.run(
            _command(tiny_checkpoint, *args, "-o", out, "--files-together", together,
                     "--bit-depth", "32f"),
            capture_output=True, text=True, env=_env(), timeout=300,
        )  # fmt: skip
        assert run.returncode == 1, run.stderr
        errors = [line for line in run.stderr.splitlines() if line.startswith("demix: error")]
        assert len(errors) == 1 and str(bad) in errors[0], run.stderr
        assert "done: 3 separated, 1 failed" in run.stdout
        runs[together] = _stems(out)
    assert runs["1"].keys() == runs["3"].keys() and len(runs["1"]) == 3 * 3
    for name, x in runs["1"].items():
        np.testing.assert_allclose(runs["3"][name], x, atol=1e-5, rtol=0, err_msg=name)
    refused = subprocess.run(
        _command(tiny_checkpoint, inputs[0], "-o", tmp_path / "x", "--files-together", "0"),
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert refused.returncode == 2 and "--files-together 0: choose 1 to 64" in refused.stderr


def test_sigterm_with_files_together_keeps_nothing_partial(tiny_checkpoint, tmp_path):
    """Interrupted while three long files are separated together: exit 130, one line naming
    them, no stem and no temporary file of theirs left."""
    from test_cli import _default_sigint, write_input

    inputs = [write_input(tmp_path / f"reel{i}.wav", 90.0, subtype="PCM_16") for i in range(3)]
    out = tmp_path / "stems"
    proc = subprocess.Popen(
        _command(tiny_checkpoint, *inputs, "-o", out, "--files-together", "3"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        preexec_fn=_default_sigint,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            partial = [p for p in out.rglob("*.tmp") if p.stat().st_size > 1 << 16] if (
                out.exists()) else []  # fmt: skip
            if len({p.parent for p in partial}) >= 2:  # two files are being written at once
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"no two files were written together (exit {proc.poll()})")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted while separating" in stderr and "Traceback" not in stderr
    assert "reel" in stderr.splitlines()[-1]
    assert not [p for p in out.rglob("*") if p.is_file()]  # nothing partial, nothing renamed
