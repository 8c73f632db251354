"""Overlap-add properties of the one chunked separation routine."""

import pytest
import torch

from demix.separate import iter_separate, overlap_window, separate_chunked


def identity(x: torch.Tensor) -> torch.Tensor:
    return x[:, None]


def context_model(x: torch.Tensor) -> torch.Tensor:
    """Output depends on the whole chunk (so chunk placement matters)."""
    return torch.stack([2 * x, x + x.mean(dim=-1, keepdim=True)], dim=1)


@pytest.mark.parametrize("length", [1, 7, 999, 1000, 1001, 1700, 4321, 10_000])
def test_identity_model_returns_input_exactly(length):
    mix = torch.randn(2, 3, length)
    out = separate_chunked(identity, mix, chunk_samples=1000, hop_samples=700, batch_size=3)
    assert out.shape == (2, 1, 3, length)
    torch.testing.assert_close(out[:, 0], mix, atol=1e-6, rtol=0)


@pytest.mark.parametrize("block", [1, 333, 1000, 4096])
def test_streaming_equals_whole_signal(block):
    mix = torch.randn(1, 2, 5555)
    whole = separate_chunked(context_model, mix, 1000, 600, batch_size=4)
    blocks = [mix[..., i : i + block] for i in range(0, mix.shape[-1], block)]
    regions = list(iter_separate(context_model, blocks, 1000, 600, batch_size=2))
    assert len(regions) > 1 or block >= 5555
    torch.testing.assert_close(torch.cat(regions, dim=-1), whole, atol=1e-6, rtol=0)


def test_batch_size_does_not_change_result():
    mix = torch.randn(3, 2, 7777)
    one = separate_chunked(context_model, mix, 1024, 512, batch_size=1)
    many = separate_chunked(context_model, mix, 1024, 512, batch_size=16)
    torch.testing.assert_close(one, many, atol=1e-6, rtol=0)


def test_chunking_matters_for_context_model_but_not_identity():
    """Guard against a routine that ignores chunk placement altogether."""
    mix = torch.randn(1, 1, 3000) + torch.linspace(0, 3, 3000)
    a = separate_chunked(context_model, mix, 1000, 500)
    b = separate_chunked(context_model, mix, 3000, 3000)
    assert not torch.allclose(a, b, atol=1e-3)


def test_input_shorter_than_chunk_and_hop_equal_chunk():
    mix = torch.randn(1, 2, 10)
    out = separate_chunked(identity, mix, 4096, 4096)
    torch.testing.assert_close(out[:, 0], mix, atol=1e-6, rtol=0)


def test_window_never_zero_and_rejects_bad_hop():
    w = overlap_window(100, 60)
    assert w.min() > 0 and w.max() == 1
    with pytest.raises(ValueError):
        separate_chunked(identity, torch.randn(1, 1, 10), 100, 0)
    with pytest.raises(ValueError):
        separate_chunked(identity, torch.randn(1, 1, 10), 100, 101)


def test_empty_stream_yields_nothing():
    assert list(iter_separate(identity, [], 100, 50)) == []


def zero_sensitive(x: torch.Tensor) -> torch.Tensor:
    """Identity scaled by the chunk's share of non-zero samples: exact only on whole audio."""
    return (x * (x != 0).float().mean(dim=-1, keepdim=True))[:, None]


@pytest.mark.parametrize("length", [1000, 1001, 1699, 1700, 5555])
@pytest.mark.parametrize("block", [None, 333])
def test_last_chunk_ends_with_the_input_not_in_zero_padding(length, block):
    mix = torch.rand(1, 2, length) + 0.5  # no zero sample anywhere
    if block is None:
        out = separate_chunked(zero_sensitive, mix, 1000, 700)
    else:
        blocks = [mix[..., i : i + block] for i in range(0, length, block)]
        out = torch.cat(list(iter_separate(zero_sensitive, blocks, 1000, 700)), dim=-1)
    torch.testing.assert_close(out[:, 0], mix, atol=1e-6, rtol=0)


@pytest.mark.parametrize("length", [1, 300, 600, 999])
def test_input_shorter_than_a_chunk_is_looped_to_fill_it(length):
    mix = torch.rand(1, 2, length) + 0.5
    out = separate_chunked(zero_sensitive, mix, 1000, 700)
    torch.testing.assert_close(out[:, 0], mix, atol=1e-6, rtol=0)
    # the model sees the clip over and over: its mean over the chunk is the clip's
    seen = []
    separate_chunked(lambda x: seen.append(x) or x[:, None], mix, 1000, 700)
    torch.testing.assert_close(seen[0][..., length : 2 * length], mix[..., : 1000 - length])
