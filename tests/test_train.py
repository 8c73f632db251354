"""Training: a few steps lower the loss; resuming is exact."""

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from demix.registry import register_dataset
from demix.train import SourceConfig, TrainConfig, train


@dataclass(frozen=True)
class ToneConfig:
    seconds: float = 0.5
    sample_rate: int = 44100


class ToneMixes(torch.utils.data.Dataset):
    """Two stems: a low tone and high-passed noise; trivially separable."""

    stems = ("low", "high")

    def __init__(self, config: ToneConfig, seed: int = 0):
        self.config, self.seed = config, seed

    def __len__(self):
        return 10_000

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, index])
        n = int(self.config.seconds * self.config.sample_rate)
        t = np.arange(n) / self.config.sample_rate
        low = 0.3 * np.sin(2 * np.pi * rng.uniform(60, 200) * t)
        high = np.diff(rng.normal(0, 0.1, n + 1))
        stems = np.stack([np.stack([low, low]), np.stack([high, high])]).astype(np.float32)
        return torch.from_numpy(stems.sum(0)), torch.from_numpy(stems)


register_dataset("test_tones", ToneConfig)(ToneMixes)


def _config(run_dir, steps, **kw):
    return TrainConfig(
        sources=(SourceConfig(name="test_tones", head="tones"),),
        model_config={"dim": 16, "layers": 2, "segment_seconds": 0.5},
        run_dir=str(run_dir),
        batch_size=2,
        steps=steps,
        lr=3e-3,
        warmup_steps=2,
        num_workers=0,
        checkpoint_every=1000,
        log_every=1,
        **kw,
    )


def _losses(run_dir):
    lines = (run_dir / "log.csv").read_text().strip().splitlines()[1:]
    return [float(line.split(",")[-1]) for line in lines]


def test_a_few_steps_lower_the_loss(tmp_path):
    train(_config(tmp_path / "run", steps=30))
    losses = _losses(tmp_path / "run")
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_resume_is_exact(tmp_path, capsys):
    train(_config(tmp_path / "straight", steps=6))
    train(_config(tmp_path / "resumed", steps=3))
    capsys.readouterr()
    train(_config(tmp_path / "resumed", steps=6))
    # The progress line's smoothed loss starts again from the first resumed step's loss (it
    # started from 0 and read about a tenth of the real loss after a resume).
    first_line = next(
        line for line in capsys.readouterr().err.splitlines() if line.startswith("step 4 ")
    )
    assert float(first_line.split()[-1]) == pytest.approx(_losses(tmp_path / "resumed")[3], 1e-3)
    a = load_file(tmp_path / "straight" / "last.safetensors")
    b = load_file(tmp_path / "resumed" / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    ema_a = load_file(tmp_path / "straight" / "ema.safetensors")
    ema_b = load_file(tmp_path / "resumed" / "ema.safetensors")
    for key in ema_a:
        torch.testing.assert_close(ema_a[key], ema_b[key], atol=0, rtol=0)
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed")


def test_snapshots_and_training_time_span_resumes(tmp_path):
    run = tmp_path / "run"
    train(_config(run, steps=2, snapshot_every=2))
    train(_config(run, steps=4, snapshot_every=2))
    snaps = sorted(p.name for p in (run / "snapshots").iterdir())
    assert snaps == ["ema-0000002.safetensors", "ema-0000004.safetensors"]
    seconds = [float(r.split(",")[1]) for r in (run / "log.csv").read_text().splitlines()[1:]]
    assert seconds == sorted(seconds) and seconds[0] > 0  # the clock continues after resume


def test_time_based_checkpoints(tmp_path, monkeypatch):
    """``checkpoint_every_seconds`` checkpoints whenever that long has passed, whatever the
    step count (what a GPU burst uses); without it, only ``checkpoint_every`` and the end."""
    import demix.train

    saved_steps = []
    real_save = demix.train.save_checkpoint

    def counting_save(path, model, name, info):
        if path.name == "last.safetensors":
            saved_steps.append(info["steps"])
        return real_save(path, model, name, info)

    monkeypatch.setattr(demix.train, "save_checkpoint", counting_save)
    train(_config(tmp_path / "by-steps", steps=4))
    assert saved_steps == [4]  # checkpoint_every=1000: the end only
    saved_steps.clear()
    train(_config(tmp_path / "by-time", steps=4, checkpoint_every_seconds=1e-6))
    assert saved_steps == [1, 2, 3, 4, 4]


def test_tensorboard_log(tmp_path):
    import pytest

    pytest.importorskip("tensorboard")
    train(_config(tmp_path / "run", steps=2, tensorboard=True))
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_init_from_starts_a_new_run_from_a_checkpoint(tmp_path):
    train(_config(tmp_path / "first", steps=3))
    train(
        _config(tmp_path / "second", steps=0, init_from=str(tmp_path / "first" / "ema.safetensors"))
    )
    a = load_file(tmp_path / "first" / "ema.safetensors")
    b = load_file(tmp_path / "second" / "last.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_stem_weights_shift_the_loss_toward_a_stem():
    from demix.losses import separation_loss

    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 3, 2, 4096, generator=gen)
    est = ref.clone()
    est[:, 2] += 0.5 * torch.randn(2, 2, 4096, generator=gen)  # only stem 2 is wrong
    plain = separation_loss(est, ref)
    assert torch.allclose(separation_loss(est, ref, stem_weights=torch.ones(3)), plain)
    heavy = separation_loss(est, ref, stem_weights=torch.tensor([1.0, 1.0, 2.0]))
    light = separation_loss(est, ref, stem_weights=torch.tensor([2.0, 2.0, 1.0]))
    # normalised to a mean of 1: the wrong stem carries 3/4 × 2 = 1.5 or 3/5 × 1 = 0.6 of it
    assert torch.allclose(heavy, 1.5 * plain, rtol=1e-5)
    assert torch.allclose(light, 0.6 * plain, rtol=1e-5)


def test_stem_weights_train_and_unknown_stems_are_refused(tmp_path):
    source = SourceConfig(name="test_tones", head="tones", stem_weights={"high": 2.0})
    train(replace(_config(tmp_path / "run", steps=3), sources=(source,)))
    assert len(_losses(tmp_path / "run")) == 3
    bad = SourceConfig(name="test_tones", head="tones", stem_weights={"hihat": 2.0})
    with pytest.raises(ValueError, match=r"hihat.*not among its stems.*high"):
        train(replace(_config(tmp_path / "bad", steps=1), sources=(bad,)))


def test_stop_at_step_ends_early_on_the_long_schedule(tmp_path):
    train(_config(tmp_path / "cut", steps=8, stop_at_step=4))
    train(_config(tmp_path / "full", steps=8))
    cut = (tmp_path / "cut" / "log.csv").read_text().strip().splitlines()[1:]
    full = (tmp_path / "full" / "log.csv").read_text().strip().splitlines()[1:]
    assert len(cut) == 4
    lr = [line.split(",")[3] for line in cut]
    assert lr == [line.split(",")[3] for line in full[:4]]  # the 8-step schedule's rates
    # resuming with the cut lifted continues the same run to its end
    train(_config(tmp_path / "cut", steps=8))
    assert len((tmp_path / "cut" / "log.csv").read_text().strip().splitlines()[1:]) == 8


def test_relative_loss_is_scale_free_and_weighs_quiet_stems_by_their_level():
    from demix.losses import separation_loss

    gen = torch.Generator().manual_seed(1)
    ref = torch.randn(2, 2, 2, 8192, generator=gen)
    ref[:, 1] *= 0.1  # stem 1 is 20 dB quieter
    mix = ref.sum(1)
    noise = 0.05 * torch.randn(2, 2, 8192, generator=gen)
    loss = separation_loss(ref + noise[:, None], ref, mix=mix)
    assert torch.allclose(separation_loss(3 * (ref + noise[:, None]), 3 * ref, mix=3 * mix), loss)
    # the same absolute error costs far more on the quiet stem than on the loud one
    on_loud = ref.clone()
    on_loud[:, 0] += noise
    on_quiet = ref.clone()
    on_quiet[:, 1] += noise
    assert separation_loss(on_quiet, ref, mix=mix) > 4 * separation_loss(on_loud, ref, mix=mix)
    # while plain waveform L1 cannot tell them apart
    plain = [separation_loss(x, ref, stft_weight=0) for x in (on_quiet, on_loud)]
    assert torch.allclose(*plain)
    # a silent stem stays finite: its level floor is a tenth of the mix's
    silent = torch.zeros_like(ref)
    silent[:, 0] = ref[:, 0]
    assert torch.isfinite(separation_loss(silent + 0.01, silent, mix=silent.sum(1)))


def test_training_with_the_relative_loss_lowers_it(tmp_path):
    train(_config(tmp_path / "run", steps=30, relative_loss=True))
    losses = _losses(tmp_path / "run")
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_a_source_can_choose_the_relative_loss_for_itself(tmp_path):
    """A source's ``relative_loss`` overrides the run's, for that source's examples only."""
    relative_source = SourceConfig(name="test_tones", head="tones", relative_loss=True)
    plain_source = SourceConfig(name="test_tones", head="tones", relative_loss=False)
    runs = {
        "run_relative": _config(tmp_path / "a", steps=1, relative_loss=True),
        "source_relative": replace(_config(tmp_path / "b", steps=1), sources=(relative_source,)),
        "plain": _config(tmp_path / "c", steps=1),
        "source_plain": replace(
            _config(tmp_path / "d", steps=1, relative_loss=True), sources=(plain_source,)
        ),
    }
    first = {}
    for name, cfg in runs.items():
        train(cfg)
        first[name] = _losses(Path(cfg.run_dir))[0]
    assert first["source_relative"] == pytest.approx(first["run_relative"])
    assert first["source_plain"] == pytest.approx(first["plain"])
    # each error divided by its stem's level (well under 1 for these tones): a larger loss
    assert first["run_relative"] > 1.5 * first["plain"]


def test_decay_steps_hold_the_rate_then_anneal():
    from demix.train import _lr_at

    cfg = replace(_config("unused", steps=100), lr=1e-3, warmup_steps=10, decay_steps=20)
    rates = [_lr_at(step, cfg) for step in range(100)]
    assert rates[4] == pytest.approx(5e-4)  # warm-up
    assert rates[10:80] == [1e-3] * 70  # held until the last 20 steps
    assert rates[80] == pytest.approx(1e-3) and rates[99] < 0.1e-3  # then cosine to 5 %
    assert all(a >= b for a, b in zip(rates[80:], rates[81:]))
    plain = replace(cfg, decay_steps=0)
    assert _lr_at(50, plain) < 1e-3  # 0: cosine over every step after the warm-up


def test_dualpath_trains_on_the_mix_rms_scale(tmp_path):
    cfg = replace(
        _config(tmp_path / "dp", steps=30),
        model="dualpath",
        model_config={"dim": 16, "layers": 1, "rnn_hidden": 16, "segment_seconds": 0.5},
        loss_on_mix_rms=True,
        stft_loss_ffts=(256, 1024),
    )
    train(cfg)
    losses = _losses(tmp_path / "dp")
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_train_speed_reports_both_precisions(tmp_path):
    from eval.train_speed import main

    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: bandsplit\n"
        "model_config: {dim: 16, layers: 1, segment_seconds: 0.5}\n"
        "sources: [{name: test_tones, head: tones, batch_size: 2}]\n"
        "num_workers: 0\nwarmup_steps: 2\n"
    )
    out = tmp_path / "speed.md"
    assert main([str(config), "--steps", "5", "--warmup-steps", "2", "--out", str(out)]) == 0
    table = out.read_text()
    assert "fp32" in table and "bf16 autocast" in table and "examples per second" in table


class CountedToneMixes(ToneMixes):
    """``ToneMixes`` that counts the examples it makes."""

    made = 0

    def __getitem__(self, index):
        CountedToneMixes.made += 1
        return super().__getitem__(index)


register_dataset("test_counted_tones", ToneConfig)(CountedToneMixes)


def test_remix_batch_shuffles_each_stem_across_the_batch():
    from demix.train import remix_batch

    stems = torch.arange(5 * 3 * 2 * 4, dtype=torch.float32).reshape(5, 3, 2, 4)
    generator = torch.Generator().manual_seed(0)
    mix, remixed = remix_batch(stems, generator)
    assert remixed.shape == stems.shape
    torch.testing.assert_close(mix, remixed.sum(1))
    torch.testing.assert_close(remixed[:, 0], stems[:, 0])  # the first stem stays
    for j in range(3):  # every stem's examples, reordered
        assert sorted(remixed[:, j, 0, 0].tolist()) == sorted(stems[:, j, 0, 0].tolist())
        for b in range(5):  # each example's stem kept whole
            row = [x for x in range(5) if torch.equal(stems[x, j], remixed[b, j])]
            assert len(row) == 1
    # a batch of two: the stems always move (the fetched pairing is redrawn)
    for _ in range(20):
        assert not torch.equal(remix_batch(stems[:2], generator)[1], stems[:2])
    pairings = {tuple(remix_batch(stems, generator)[1][:, :, 0, 0].flatten().tolist())
                for _ in range(10)}  # fmt: skip
    assert len(pairings) > 1  # new mixtures, not the fetched ones


def test_remix_steps_train_on_fewer_fetched_mixes(tmp_path):
    """With ``remix_steps`` 2, every fetched batch trains three steps (the fetched one and
    two remixes), so six steps fetch two batches of two."""
    CountedToneMixes.made = 0
    cfg = replace(
        _config(tmp_path / "run", steps=6, remix_steps=2),
        sources=(SourceConfig(name="test_counted_tones", head="tones"),),
    )
    train(cfg)
    assert CountedToneMixes.made == 4
    assert len(_losses(tmp_path / "run")) == 6
    CountedToneMixes.made = 0
    train(replace(cfg, run_dir=str(tmp_path / "plain"), remix_steps=0))
    assert CountedToneMixes.made == 12


def test_demix_train_config_errors_are_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    """``demix train`` with a missing config, an unknown key, a bad override or an unknown
    model: one line naming the config, exit status 2, no traceback."""
    from demix.train import main

    good = tmp_path / "run.yaml"
    good.write_text("model: tiny\nsources: []\nrun_dir: runs/x\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model: tiny\nsources: []\nlearning_rate: 0.1\n")
    incomplete = tmp_path / "incomplete.yaml"
    incomplete.write_text("model: tiny\n")
    no_model = tmp_path / "no_model.yaml"
    no_model.write_text(f"model: no-such-model\nsources: []\nrun_dir: {tmp_path / 'run'}\n")
    cases = [
        ([str(tmp_path / "missing.yaml")], "missing.yaml"),
        ([str(unknown)], "unknown key(s) learning_rate"),
        ([str(incomplete)], "missing key(s) sources"),
        ([str(good), "--set", "lr"], "expected key=value"),
        ([str(good), "--set", "lr=fast"], "expected a number"),
        ([str(no_model)], "unknown model 'no-such-model'"),
    ]
    for argv, reason in cases:
        assert main(argv) == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("demix train: "), lines
        assert reason in lines[0], lines

    # An unknown model or a run_dir that is a file: said before the data sources are built
    # (minutes of decoding and rendering), not after; a file as run_dir was a traceback.
    import demix.train

    def never(*args, **kwargs):
        raise AssertionError("the data sources were built first")

    monkeypatch.setattr(demix.train, "build_sources", never)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    on_file = tmp_path / "on_file.yaml"
    on_file.write_text(f"model: dualpath\nsources: []\nrun_dir: {a_file}\n")
    for argv, reason in (([str(no_model)], "unknown model 'no-such-model'"),
                         ([str(on_file)], "is a file, not a folder")):  # fmt: skip
        assert main(argv) == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0], lines
    assert a_file.read_text() == "" and not (tmp_path / "run").exists()


def test_accumulated_micro_batches_are_the_large_batch(tmp_path):
    """``accumulate_steps`` 2 at batch 2 draws the examples of batch 4 into one optimiser
    step (the same loss at every step up to rounding) and resumes without redrawing any."""
    train(replace(_config(tmp_path / "large", steps=4), batch_size=4))
    train(replace(_config(tmp_path / "acc", steps=4), accumulate_steps=2))
    np.testing.assert_allclose(_losses(tmp_path / "acc"), _losses(tmp_path / "large"), rtol=2e-3)
    train(replace(_config(tmp_path / "resumed", steps=2), accumulate_steps=2))
    train(replace(_config(tmp_path / "resumed", steps=4), accumulate_steps=2))
    a = load_file(tmp_path / "acc" / "last.safetensors")
    b = load_file(tmp_path / "resumed" / "last.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    with pytest.raises(ValueError, match="accumulate_steps"):
        train(replace(_config(tmp_path / "bad", steps=1), accumulate_steps=0))


def _dualpath_config(run_dir, steps, **kw):
    return replace(
        _config(run_dir, steps),
        model="dualpath",
        model_config={"dim": 16, "layers": 1, "rnn_hidden": 16, "segment_seconds": 0.5},
        **kw,
    )


def test_bf16_probe_answers_for_this_machine_and_keeps_the_random_stream():
    """The probe says whether an LSTM really runs under bf16 autocast here (oneDNN refuses on
    AVX2-only CPUs) and draws nothing from the run's random stream."""
    from demix.train import bf16_autocast_works

    lstm = torch.nn.LSTM(4, 4, bidirectional=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.randn(3, 1, 4))[0].float().sum().backward()
        expected = True
    except RuntimeError:
        expected = False
    state = torch.get_rng_state()
    assert bf16_autocast_works("cpu") is expected
    assert torch.equal(state, torch.get_rng_state())


def test_bf16_config_trains_in_float32_where_the_cpu_cannot(tmp_path, monkeypatch, capsys):
    """A config asking for bf16 on a CPU without bf16 LSTMs trains in float32 with one line
    saying so (it stopped at the first step with oneDNN's 'could not create a primitive
    descriptor'); the run is then the float32 run exactly."""
    import demix.train

    train(_dualpath_config(tmp_path / "fp32", steps=3))
    monkeypatch.setattr(demix.train, "bf16_autocast_works", lambda device: False)
    capsys.readouterr()
    train(_dualpath_config(tmp_path / "asked", steps=3, autocast_bf16=True))
    assert "training in float32" in capsys.readouterr().err
    assert _losses(tmp_path / "asked") == _losses(tmp_path / "fp32")
    monkeypatch.undo()
    train(_dualpath_config(tmp_path / "here", steps=3, autocast_bf16=True))  # real probe
    assert len(_losses(tmp_path / "here")) == 3


def test_an_error_in_training_ends_the_process(tmp_path):
    """An exception in the training loop exits the process with the error (the data workers
    ignore SIGTERM, and Python's exit waited for them forever while the traceback kept the
    loader alive: a crashed run hung instead of ending)."""
    import subprocess
    import sys

    script = f"""
import sys
from dataclasses import replace
sys.path.insert(0, {str(Path(__file__).parent)!r})
import test_train  # registers the test_tones dataset
import demix.train

def fail(*args, **kwargs):
    raise RuntimeError("loss failed")

demix.train.separation_loss = fail
demix.train.train(replace(test_train._config({str(tmp_path / "run")!r}, 3), num_workers=1))
"""
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the crashed training process did not exit within 120 s")
    assert done.returncode != 0 and "loss failed" in done.stderr
