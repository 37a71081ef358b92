"""Specification of prefix-embedding and prefix-layer tuning, alone and with LoRA (Hu et al. 2021, §5.1)."""
import numpy as np
import pytest

from minilora import io
from minilora.adapters.config import LoraConfig
from minilora.adapters.prefix import PrefixConfig, PrefixModel, expected_trainable_count, infix_token_ids
from minilora.data.tasks import default_tokenizer
from minilora.nn.model import GPT, GPTConfig

from helpers import check_model_gradients

SMALL = GPTConfig(vocab_size=13, block_size=12, n_layer=3, n_head=2, n_embd=8)
EQ = 12


def base(seed=0, spread=0.0):
    """A float64 GPT; ``spread`` > 0 adds O(spread) noise to every weight (gradient checks need O(1) weights,
    where GPT-2's 0.02 makes some gradients so small that rounding decides the check)."""
    model = GPT(SMALL, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 5)
    for p in model.params.values():
        p[...] += spread * rng.standard_normal(p.shape)
    return model


def batch(rng, B=3, T=6):
    """Rows with one EQ each (the token the infix goes before), targets and a mask."""
    x = rng.integers(0, 12, (B, T))
    x[np.arange(B), np.arange(B) + 1] = EQ
    return {"x": x, "y": rng.integers(0, 13, (B, T)), "mask": (rng.random((B, T)) < 0.8).astype(float)}


def config(mode="embedding", lp=2, li=1, **kw):
    return PrefixConfig(n_prefix=lp, n_infix=li, mode=mode, infix_before=(EQ,), **kw)


@pytest.mark.parametrize("mode,lp,li", [("embedding", 2, 1), ("embedding", 0, 3), ("layer", 2, 1), ("layer", 4, 0)])
def test_trainable_count_matches_the_papers_formula(mode, lp, li):
    """PreEmbed: d_model (l_p + l_i); PreLayer: L d_model (l_p + l_i) (Hu et al. 2021, §5.1), written out here."""
    L, C = SMALL.n_layer, SMALL.n_embd
    by_hand = C * (lp + li) * (L if mode == "layer" else 1)
    cfg = config(mode, lp, li)
    got = PrefixModel(base(), cfg).num_params(trainable_only=True)
    assert got == by_hand == expected_trainable_count(cfg, SMALL), f"expected {by_hand}, got {got}"


@pytest.mark.parametrize("mode", ["embedding", "layer"])
def test_lora_plus_prefix_trains_both_counts_added(mode):
    """LoRA+PE / LoRA+PL: 2 L_hat d_model r (LoRA on wq, wv) plus the prefix's own count."""
    L, C, r = SMALL.n_layer, SMALL.n_embd, 2
    cfg = config(mode, lora=LoraConfig(r=r, target_modules=("wq", "wv")))
    got = PrefixModel(base(), cfg).num_params(trainable_only=True)
    expected = 2 * (2 * L) * C * r + expected_trainable_count(cfg, SMALL)
    assert got == expected, f"expected {expected}, got {got}"


@pytest.mark.parametrize("mode", ["embedding", "layer"])
def test_every_prefix_gradient_matches_numerical_gradient(mode, rng):
    """S_i and (with LoRA, B random) A and B agree with central differences in float64."""
    host = PrefixModel(base(spread=0.3), config(mode, lora=LoraConfig(r=2)))
    for name in sorted(host.trainable):              # sorted: a set's order changes with the hash seed
        host.params[name][...] = 0.5 * rng.standard_normal(host.params[name].shape)   # B = 0 would hide a wrong dA
    check_model_gradients(host, batch(rng), max_entries=30, atol=0.0)


def test_states_start_from_real_tokens_and_disable_gives_the_base(rng):
    """S_0 is a real token's embedding plus its position's; disabling the adapter is the base exactly."""
    model = base()
    b = batch(rng)
    plain, _ = model.forward(b["x"])
    host = PrefixModel(model, config("layer", seed=3))
    S0, wte, wpe = host.params[host.param_name("prefix.states.0")], model.params["wte.weight"], model.params["wpe.weight"]
    token = np.argmin(np.abs((S0[0] - wpe[0])[None, :] - wte).sum(axis=1))
    assert np.allclose(S0[0], wte[token] + wpe[0]), "S_0's first row must be a vocabulary token at position 0"
    assert not np.allclose(host.forward(b["x"])[0], plain), "the special positions change the output from step 0"
    with host.disable_adapter():
        assert np.array_equal(host.forward(b["x"])[0], plain), "disabled must be the base exactly"


def test_a_prefix_that_leaves_no_room_is_refused():
    """l_p + l_i >= block_size leaves no position for a token: refused, naming the fix."""
    with pytest.raises(ValueError, match="leave no room.*fewer special tokens"):
        PrefixModel(base(), config(lp=10, li=2))


def test_rows_longer_than_the_room_left_are_refused(rng):
    """With 3 specials in block_size 12 a row may hold 9 tokens; 10 are refused with the room named."""
    host = PrefixModel(base(), config(lp=2, li=1))
    row = np.full((1, 9), EQ)
    assert host.forward(row)[0].shape == (1, 9, 13)
    with pytest.raises(ValueError, match="room for 9 tokens"):
        host.forward(np.full((1, 10), EQ))


def test_round_trip_switch_and_other_base(tmp_path, rng):
    """Saved with its config (LoRA part included) and loaded: same logits; two adapters switch; another
    base refuses it."""
    host = PrefixModel(base(), config("layer", lora=LoraConfig(r=2)))
    for name in sorted(host.trainable):
        host.params[name][...] += rng.standard_normal(host.params[name].shape)
    x = batch(rng)["x"]
    first, _ = host.forward(x)
    host.save_adapter(tmp_path / "p")
    host.add_adapter("pe", config("embedding", lp=1, li=2))
    second, _ = host.forward(x)
    host.set_adapter("default")
    assert np.array_equal(host.forward(x)[0], first) and not np.allclose(first, second), "switching failed"
    other = PrefixModel(base(), config())
    other.load_adapter(tmp_path / "p", "loaded")
    assert other.adapters["loaded"] == host.adapters["default"], "the config (LoRA part too) must round-trip"
    assert np.array_equal(other.forward(x)[0], first), "the loaded adapter must give the saved logits"
    with pytest.raises(io.CheckpointError, match="different base model"):
        PrefixModel(base(seed=1), config()).load_adapter(tmp_path / "p")


def test_lora_part_merges_but_the_prefix_cannot_be_unloaded(rng):
    """merge_adapter folds LoRA's part (same logits, the specials stay); merge_and_unload is refused."""
    host = PrefixModel(base(), config("embedding", lora=LoraConfig(r=2)))
    for name in sorted(host.trainable):
        host.params[name][...] += 0.3 * rng.standard_normal(host.params[name].shape)
    x = batch(rng)["x"]
    unmerged, _ = host.forward(x)
    host.merge_adapter()
    assert np.allclose(host.forward(x)[0], unmerged, atol=1e-10), "merged LoRA+PE must compute the same"
    with pytest.raises(ValueError, match="special positions"):
        host.merge_and_unload()


def test_infix_token_ids_are_the_prompt_ends():
    """The shipped tokenizer's '=' and '?' are the tokens minilora's prompts end with."""
    tok = default_tokenizer()
    ids = infix_token_ids(tok.encode)
    assert tok.decode(list(ids)) == "=?", f"expected the ids of '=' and '?', got {ids} -> {tok.decode(list(ids))!r}"


def test_training_moves_the_states_and_leaves_the_base_bit_identical(tiny_base):
    """The training loop (fast kernels, worker threads) trains S_i and LoRA's part; no base weight moves."""
    from minilora.data.datasets import make_splits
    from minilora.experiments.train import TrainConfig, train

    train_data, _ = make_splits("shift", 64, 8, seed=0, block_size=24, min_len=3, max_len=5)
    longest = int(train_data.mask.nonzero()[1].max()) + 1          # rows end there; the rest is padding
    train_data.x, train_data.y, train_data.mask = (a[:, :longest] for a in (train_data.x, train_data.y, train_data.mask))
    model = GPT(tiny_base.config, {k: v.copy() for k, v in tiny_base.params.items()})
    before = {k: v.copy() for k, v in model.params.items()}
    host = PrefixModel(model, PrefixConfig(n_prefix=1, n_infix=1, mode="layer", lora=LoraConfig(r=2),
                                           infix_before=infix_token_ids(default_tokenizer().encode)))
    start = {k: host.params[k].copy() for k in host.trainable}
    history = train(host, train_data, None, TrainConfig(steps=4, batch_size=16, lr=1e-2, warmup_steps=1,
                                                        progress=False))
    assert all(np.array_equal(model.params[k], v) for k, v in before.items()), "a base weight changed"
    moved = [k for k in start if not np.array_equal(host.params[k], start[k])]
    assert any(k.startswith("prefix.states.") for k in moved), f"no state moved; moved {moved[:3]}"
    assert np.isfinite(history.losses).all(), history.losses
