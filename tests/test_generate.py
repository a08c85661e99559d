"""Generation with and without the KV cache: same tokens, cached context equal to the full pass,
through the decoder each model hands out."""

import pytest
import torch

from conftest import tiny_model
from ebt.errors import ConfigError
from ebt.generate import generate

PROMPT = [1, 4, 2, 7, 3]


@pytest.mark.parametrize("kind", ["ebt", "transformer", "ebt-s2"])
@pytest.mark.parametrize("new_tokens", [2, 20])  # 20 outgrows the 8-token window: the window slides
def test_greedy_generation_is_identical_with_and_without_the_cache(kind: str, new_tokens: int) -> None:
    overrides = {"think.landscape_per_step": False} if kind == "ebt-s2" else {}
    model = tiny_model(kind.removesuffix("-s2"), dtype=torch.float32, overrides=overrides)
    cached = generate(model, PROMPT, new_tokens, temperature=0, cache=True)
    uncached = generate(model, PROMPT, new_tokens, temperature=0, cache=False)
    assert cached == uncached and len(cached) == new_tokens


@pytest.mark.parametrize("thinking", [{"samples": 3}, {"steps": 4, "langevin_std": 0.5}])
def test_sampled_ebt_generation_with_thinking_is_identical_with_and_without_the_cache(thinking: dict) -> None:
    model = tiny_model("ebt", dtype=torch.float32)
    kwargs = dict(temperature=1.0, seed=5, **thinking)
    assert generate(model, PROMPT, 12, cache=True, **kwargs) == generate(model, PROMPT, 12, cache=False, **kwargs)


def test_transformer_cache_continues_the_sequence_exactly() -> None:
    model = tiny_model("transformer")  # float64
    ids = torch.tensor([PROMPT + [5, 6]])  # (1, 7)
    full = model(ids)
    past: list = []
    first = model(ids[:, :4], past=past)
    rest = [model(ids[:, t:t + 1], past=past) for t in range(4, 7)]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, rtol=0, atol=1e-12)


def test_ebt_landscapes_extended_token_by_token_give_the_full_energies() -> None:
    model = tiny_model("ebt")  # float64
    ids = torch.tensor([PROMPT + [5, 6]])  # (1, 7)
    p = torch.softmax(torch.randn(1, 1, 1, 11, dtype=torch.float64), -1)  # (B, M, S=1, V): last position
    landscapes = model.landscapes(ids[:, :3], differentiable=False)
    landscapes(p, 0), landscapes(p, 1)  # both landscapes cached at 3 tokens
    for t in range(3, 7):
        landscapes.append(ids[:, t:t + 1])
    fresh = model.landscapes(ids, differentiable=False)
    for step in (0, 1, 5):
        torch.testing.assert_close(landscapes(p, step), fresh(p, step), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["ebt", "transformer"])
def test_a_decoders_cached_steps_predict_as_a_fresh_start(kind: str) -> None:
    """Both models' decoders (`model.decoder`): each step over the cache, and past the 8-token
    window each step over the slid window, predicts what a decoder started afresh on the sequence
    so far predicts (with the same random draws)."""
    model = tiny_model(kind)  # float64
    ids = torch.tensor([PROMPT + [5, 6, 8, 9, 10, 1, 2]])  # (1, 12)
    draws, fresh_draws = torch.Generator(), torch.Generator()
    decoder = model.decoder(generator=draws)
    for t in range(3, 13):
        draws.manual_seed(t)
        y = decoder.step(ids[:, t - 1:t]) if t > 3 else decoder.start(ids[:, :t])  # (1, V)
        fresh_draws.manual_seed(t)
        fresh = model.decoder(generator=fresh_draws, cache=False).start(ids[:, :t])
        assert y.shape == (1, 11)
        torch.testing.assert_close(y, fresh, rtol=0, atol=1e-10)


def test_a_transformer_decoder_refuses_thinking_options() -> None:
    with pytest.raises(ConfigError, match=r"a Transformer\+\+ cannot think"):
        tiny_model("transformer").decoder(steps=2)
