"""The Separator API: sum-to-mix, selection + rest, rates and layouts, no mutation."""

import numpy as np
import pytest
import torch

from cdx import CDX_STEMS
from demix import SeparationError, Separator
from demix.data import default_data_root
from mdx import MDX_STEMS

DATA = default_data_root()


@pytest.fixture(scope="module")
def sep(tiny_checkpoint):
    return Separator.from_pretrained(str(tiny_checkpoint))


@pytest.mark.parametrize(
    ("channels", "rate"), [(1, 44100), (2, 48000), (6, 48000), (8, 22050), (2, 16000)]
)
def test_stems_sum_to_mix_any_rate_and_layout(sep, channels, rate):
    rng = np.random.default_rng(channels)
    mix = (0.1 * rng.standard_normal((channels, int(2.5 * rate) + 7))).astype(np.float32)
    out = sep.separate(mix, rate, head="film")
    assert list(out) == list(CDX_STEMS)
    for v in out.values():
        assert v.shape == mix.shape
    total = sum(v.numpy() for v in out.values())
    assert np.abs(total - mix).max() < 1e-5


def test_selected_plus_rest_and_both_heads(sep):
    mix = torch.randn(2, 44100) * 0.1
    before = mix.clone()
    out = sep.separate(mix, 44100, head="music", stems=["vocals", "drums"])
    assert list(out) == ["drums", "vocals", "rest"]
    torch.testing.assert_close(out["drums"] + out["vocals"] + out["rest"], mix, atol=1e-5, rtol=0)
    assert torch.equal(mix, before)  # the caller's tensor is untouched
    both = sep.separate(mix, 44100, head="both")
    assert list(both) == list(CDX_STEMS) + list(MDX_STEMS)
    picked = sep.separate(mix, 44100, head="both", stems=["dialogue", "bass"])
    assert list(picked) == ["dialogue", "film_rest", "bass", "music_rest"]
    assert sep.head_for(["vocals", "Drums"]) == "music"
    assert sep.head_for(["Dialogue", "bass"]) == "both"  # it was film, then "unknown bass"
    assert sep.head_for(["vocals", "kazoo"]) == "music"  # plan names kazoo as unknown
    assert sep.head_for(["dialogue", "vocals", "kazoo"]) == "both"
    with pytest.raises(SeparationError, match=r"unknown stem\(s\) kazoo for head both"):
        sep.plan("both", ["dialogue", "vocals", "kazoo"])
    assert sep.head_for(["kazoo"]) == "film" and sep.head_for(None) == "film"
    assert sep.plan("music", ["VOCALS", "drums", "vocals"]).outputs == ("drums", "vocals", "rest")


def test_mono_vector_in_mono_vector_out(sep):
    mix = np.random.default_rng(0).standard_normal(30000).astype(np.float32) * 0.1
    out = sep.separate(mix, 32000, head="film", stems=["dialogue"])
    assert out["dialogue"].shape == (30000,)
    np.testing.assert_allclose((out["dialogue"] + out["rest"]).numpy(), mix, atol=1e-5)


def test_errors(sep):
    mix = np.zeros((2, 1000), np.float32)
    with pytest.raises(SeparationError, match="kazoo"):
        sep.separate(mix, 44100, stems=["kazoo"])
    with pytest.raises(SeparationError, match="karaoke"):
        sep.separate(mix, 44100, head="karaoke")
    with pytest.raises(SeparationError, match="channels"):
        sep.separate(np.zeros((17, 1000), np.float32), 44100)
    with pytest.raises(SeparationError, match="zero length"):
        sep.separate(np.zeros((2, 0), np.float32), 44100)
    bad = mix.copy()
    bad[0, 10] = np.nan
    with pytest.raises(SeparationError, match="NaN"):
        sep.separate(bad, 44100)
    with pytest.raises(SeparationError, match="unknown model"):
        Separator.from_pretrained("no-such-model")


def test_samples_of_every_type_meet_the_model_at_full_scale(sep):
    """A user trial: ``stream`` took int16 blocks as floats (stems summing to 28,876, not
    0.88), uint8 went in with its 128 offset, a bfloat16 tensor, a sample rate of "44100",
    0 or 44100.5 and ``stems="dialogue"`` failed inside numpy, torch or soxr."""
    rng = np.random.default_rng(3)
    ints = (rng.standard_normal((2, 4000)) * 3000).astype(np.int16)
    expected = ints / 32768.0
    streamed = list(sep.stream([ints], 16000, 2, stems=["dialogue"]))
    total = sum(np.concatenate([b[k] for b in streamed], axis=1) for k in ("dialogue", "rest"))
    np.testing.assert_allclose(total, expected, atol=1e-5)
    pcm8 = (128 + rng.integers(-60, 60, (2, 4000))).astype(np.uint8)
    out = sep.separate(pcm8, 16000)
    np.testing.assert_allclose(sum(out.values()).numpy(), (pcm8 - 128.0) / 128, atol=1e-5)
    half = torch.from_numpy(expected.astype(np.float32)).to(torch.bfloat16)
    out = sep.separate(half, 16000, stems="dialogue")  # one stem given as a string
    assert set(out) == {"dialogue", "rest"}
    np.testing.assert_allclose(sum(out.values()).numpy(), half.float().numpy(), atol=1e-5)
    for rate in ("44100", 0, -44100, 44100.5):
        with pytest.raises(SeparationError, match="sample_rate"):
            sep.separate(expected, rate)
    with pytest.raises(SeparationError, match="uint16"):
        sep.separate(ints.astype(np.uint16), 16000)


def test_silence_in_silence_out(sep):
    out = sep.separate(np.zeros((2, 44100), np.float32), 44100, head="both")
    assert all(float(v.abs().max()) == 0.0 for v in out.values())


@pytest.mark.skipif(
    not (DATA / "MANIFEST.csv").exists(), reason=f"development data not found at {DATA}"
)
def test_sum_to_mix_on_real_audio(sep):
    from demix import audio

    song = sorted((DATA / "music" / "macleod").glob("*.ogg"))[0]
    mix, rate = audio.read(song)
    mix = mix[:, : 6 * rate]
    out = sep.separate(mix, rate, head="both")
    film = sum(out[s].numpy() for s in CDX_STEMS)
    music = sum(out[s].numpy() for s in MDX_STEMS)
    assert np.abs(film - mix).max() < 1e-5
    assert np.abs(music - mix).max() < 1e-5


def test_short_chunk_model_keeps_a_sane_hop(tiny_checkpoint):
    short = Separator.from_pretrained(str(tiny_checkpoint), overlap_seconds=10.0)
    assert short.hop_samples == short.chunk_samples - short.chunk_samples // 2


def test_shifts_average_shifted_passes_reproducibly(tiny_checkpoint):
    """shifts=3 (demucs' shift trick): a different estimate from one pass, the same on every
    call (seeded offsets), still summing to the mix; out-of-range counts are refused."""
    rng = np.random.default_rng(3)
    mix = (0.1 * rng.standard_normal((2, 3 * 44100))).astype(np.float32)
    one = Separator.from_pretrained(str(tiny_checkpoint)).separate(mix, 44100)
    shifted = Separator.from_pretrained(str(tiny_checkpoint), shifts=3)
    first, again = shifted.separate(mix, 44100), shifted.separate(mix, 44100)
    for name in CDX_STEMS:
        assert torch.equal(first[name], again[name])
        assert (first[name] - one[name]).abs().max() > 1e-4
    assert np.abs(sum(v.numpy() for v in first.values()) - mix).max() < 1e-5
    for bad in (0, 21):
        with pytest.raises(SeparationError, match="shifts"):
            Separator.from_pretrained(str(tiny_checkpoint), shifts=bad)


def test_a_hot_float_input_leaves_no_inverted_overs_in_the_last_stem(sep, tmp_path):
    """A 32-bit float input peaking at +4 dBFS separated into 24-bit stems: the last stem
    (effects) is its float version to a step wherever that fits, not the clipped mix minus
    the others (which put inverted overs into it, unclipped and uncounted)."""
    import soundfile as sf

    rng = np.random.default_rng(3)
    hot = 0.5 * rng.standard_normal((44100, 2))
    hot[1000:1400] = 1.6  # a loud passage past full scale
    source = tmp_path / "hot.wav"
    sf.write(source, hot.astype(np.float32), 44100, subtype="FLOAT")
    notes = []
    ints = sep.separate_file(source, tmp_path / "i", bit_depth="24", warn=notes.append)
    floats = sep.separate_file(source, tmp_path / "f", bit_depth="32f")
    stems = {name: sf.read(path, always_2d=True)[0] for name, path in floats.items()}
    effects = sf.read(ints["effects"], always_2d=True)[0]
    fits = np.all([np.abs(x) < 1.0 - 2.0**-20 for x in stems.values()], axis=0)  # no stem clips
    assert fits[1000:1400].mean() > 0.5  # (most of the hot passage is such samples)
    assert np.abs(effects - stems["effects"])[fits].max() <= 8 * 2.0**-23  # float32 sums
    assert len(notes) == 1 and "clipped in the 24-bit stems" in notes[0], notes


def test_without_a_head_the_stems_choose_it_as_on_the_command_line(sep):
    """``separate(x, rate, stems=["vocals"])`` failed ("unknown stem(s) vocals for head
    film"): the API's head was always film, where the CLI picks the head that has them."""
    rng = np.random.default_rng(4)
    x = (0.1 * rng.standard_normal((2, 22050))).astype(np.float32)
    assert set(sep.separate(x, 44100, stems=["vocals"])) == {"vocals", "rest"}
    assert set(sep.separate(x, 44100)) == {"dialogue", "music", "effects"}
    assert sep.plan(stems=["dialogue", "vocals"]).heads == ("film", "music")
    with pytest.raises(SeparationError, match="unknown stem"):
        sep.separate(x, 44100, head="film", stems=["vocals"])  # a named head still holds


def test_a_producers_surprises_are_said(sep, tmp_path):
    """A hot master written as FLAC or mp3 was told to "use --bit-depth 32f", which both
    formats refuse; a 22.05-kHz song's mp3 stems came out at 160 kb/s where 320 was asked,
    without a word; ``stems="vocals,drums"`` was one unknown stem; ``--stems vox`` named only
    the film head's stems. Each now says what to do."""
    from demix import audio

    rng = np.random.default_rng(5)
    hot = tmp_path / "hot.wav"
    audio.write(hot, (2.0 * rng.uniform(-1, 1, (2, 22050))).astype(np.float32), 44100, "wav",
                "32f")  # fmt: skip
    advice_of = {"flac": "FLAC has no float samples: write WAV with --bit-depth 32f",
                 "mp3": "mp3 cannot keep them: write WAV with --bit-depth 32f"}  # fmt: skip
    for fmt, advice in advice_of.items():
        said: list[str] = []
        sep.separate_file(hot, tmp_path / fmt, head="film", fmt=fmt, warn=said.append)
        assert any("clipped" in line and advice in line for line in said), said
    low = tmp_path / "low.wav"
    audio.write(low, (0.1 * rng.standard_normal((2, 22050))).astype(np.float32), 22050, "wav",
                "16")  # fmt: skip
    said = []
    sep.separate_file(low, tmp_path / "mp3-low", head="film", fmt="mp3", warn=said.append)
    assert any("holds at most 160 kb/s: its stems are 160 kb/s, not 320" in x for x in said)
    x = (0.1 * rng.standard_normal((2, 22050))).astype(np.float32)
    assert set(sep.separate(x, 44100, stems="vocals, drums")) == {"vocals", "drums", "rest"}
    with pytest.raises(SeparationError, match=r"the music head has drums, bass, vocals"):
        sep.plan(stems=["vox"])


def test_folders_find_every_format_demix_reads(tmp_path):
    """A folder's .aifc, .caf, .w64, WavPack and .mka files were left out without a word,
    though each separates when named."""
    from demix import audio

    names = ["a.aifc", "b.caf", "c.w64", "d.wv", "e.mka", "f.wav", "notes.txt"]
    for name in names:
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"")
    found = sorted(p.name for p, _ in audio.find_inputs([str(tmp_path / "in")]))
    assert found == names[:-1]
