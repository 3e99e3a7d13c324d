"""EM driven from Python: the E-step and the M-step on batches the test chooses."""

import numpy as np
import pytest

import modula


def regimes(n, seed):
    """Inputs in R^2 whose sign of the first coordinate picks one of two linear maps."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = np.where(x[:, :1] > 0, x @ [[2.0], [1.0]], x @ [[-1.0], [3.0]]).astype(np.float32)
    return x, y


def test_e_steps_never_lower_the_score_and_m_steps_fit():
    x, y = regimes(256, 0)
    model = modula.ModularMlp(2, 1, modules=2, k=1, seed=0)
    em = modula.EM(model, examples=256, samples=5, lr=0.05, seed=0)
    keys = np.arange(256)
    first = model.nll(x, y).mean()
    for step in range(150):
        rows = keys[(step * 64) % 256:][:64]
        if step % 5 == 0:
            e = em.e_step((x[rows], y[rows]), rows)
            # Candidate 0 is the stored assignment, so the step can only improve the score.
            assert e["score_after"] >= e["score_before"]
            assert 0.0 <= e["changed"] <= 1.0
        else:
            m = em.m_step((x[rows], y[rows]), rows)
            assert np.isfinite(m["nll"]) and len(m["usage"]) == 1
            assert sum(m["usage"][0]) == len(rows)
    assert em.steps == 150
    assert model.nll(x, y).mean() < first
    assert em.assignments(keys[:10]).shape == (10, 1)


def test_em_is_reproducible_from_its_seed():
    x, y = regimes(64, 1)
    keys = np.arange(64)
    params = []
    for _ in range(2):
        model = modula.ModularMlp(2, 1, modules=3, k=1, layers=2, hidden=4, seed=3)
        em = modula.EM(model, examples=64, seed=3)
        for _ in range(3):
            em.e_step((x, y), keys)
            em.m_step((x, y), keys)
        params.append(model.parameters())
        assert em.assignments(keys, layer=1).shape == (64, 1)
    for name, value in params[0].items():
        np.testing.assert_array_equal(value, params[1][name], err_msg=name)


def test_a_table_without_examples_grows_as_indices_arrive():
    x, y = regimes(96, 6)
    model = modula.ModularMlp(2, 1, modules=3, k=1, layers=2, hidden=4, seed=2)
    em = modula.EM(model, seed=2)
    assert em.examples == 0
    first, second = np.arange(64), np.arange(64, 96)
    em.e_step((x[first], y[first]), first)
    assert em.examples == 64
    kept = em.assignments(first, layer=1)
    # A second task's examples take the next indices; the first task's keep theirs.
    em.e_step((x[second], y[second]), second)
    assert em.examples == 96
    np.testing.assert_array_equal(em.assignments(first, layer=1), kept)
    m = em.m_step((x, y), np.arange(96))
    assert np.isfinite(m["nll"])
    with pytest.raises(modula.ArrayError, match="indices"):
        em.assignments(np.arange(90, 100))
    with pytest.raises(modula.ArrayError, match="indices"):
        em.e_step((x[:1], y[:1]), np.array([2**30]))
    assert em.examples == 96

    # The same calls from the same seed draw the same new rows.
    again = modula.EM(modula.ModularMlp(2, 1, modules=3, k=1, layers=2, hidden=4, seed=2), seed=2)
    again.e_step((x[first], y[first]), first)
    np.testing.assert_array_equal(again.assignments(first, layer=1), kept)


def test_classification_targets_are_integer_classes():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=32)
    model = modula.ModularMlp(4, 3, modules=2, k=1)
    em = modula.EM(model, examples=32)
    stats = em.m_step((x, y), np.arange(32))
    assert stats["nll"] > 0
    assert model.predict(x).shape == (32, 3)
    with pytest.raises(modula.ArrayError, match=r"0\.\.3"):
        em.m_step((x, np.full(32, 3)), np.arange(32))


def test_bad_batches_raise_the_documented_exceptions():
    x, y = regimes(8, 3)
    model = modula.ModularMlp(2, 1)
    em = modula.EM(model, examples=8)
    with pytest.raises(modula.ArrayError, match=r"0\.\.8"):
        em.e_step((x, y), np.arange(1, 9))
    with pytest.raises(modula.ArrayError, match="rows"):
        em.m_step((x, y), np.arange(4))
    with pytest.raises(modula.ArrayError, match="rows"):
        em.m_step((x, y[:4]), np.arange(8))
    with pytest.raises(modula.DTypeError, match="tuple"):
        em.m_step(x, np.arange(8))
    with pytest.raises(modula.DTypeError):
        modula.EM(object(), examples=8)
    with pytest.raises(modula.ConfigError, match="samples"):
        modula.EM(model, examples=8, samples=0)
    with pytest.raises(modula.ConfigError, match="examples"):
        modula.EM(model, examples=0)
    with pytest.raises(modula.ConfigError, match="examples"):
        modula.EM(model, examples=2**33)


def test_a_diverging_m_step_leaves_the_parameters():
    x, y = regimes(8, 4)
    model = modula.ModularMlp(2, 1)
    em = modula.EM(model, examples=8)
    before = model.parameters()
    with pytest.raises(modula.DivergedError, match="lr"):
        em.m_step((x, np.full_like(y, np.inf)), np.arange(8))
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_language_model_windows_with_em():
    rng = np.random.default_rng(5)
    vocab, steps, streams = 12, 6, 4
    model = modula.LanguageModel(vocab, seed=1, embed=8, hidden=8, modules=3, k=1)
    assert model.hidden == 8
    ids = rng.integers(0, vocab, size=(steps, streams))
    targets = rng.integers(0, vocab, size=(steps, streams))
    nll, h = model.nll(ids, targets)
    assert nll.shape == (steps, streams) and h.shape == (streams, 8)
    em = modula.EM(model, examples=steps * streams, samples=4, seed=1)
    keys = np.arange(steps * streams).reshape(steps, streams)
    e = em.e_step((ids, targets), keys)
    assert e["score_after"] >= e["score_before"]
    m = em.m_step((ids, targets, h), keys)
    assert m["h_last"].shape == (streams, 8) and np.isfinite(m["nll"])
    with pytest.raises(modula.ArrayError, match="match"):
        em.m_step((ids, targets), keys[:, :2].copy())
    with pytest.raises(modula.ConfigError, match="unknown field"):
        modula.LanguageModel(vocab, hiden=8)


def test_shared_base_modules_stay_the_base_plus_their_deltas():
    # An M-step trains the shared base and the deltas; each module's tensors are then
    # recomputed as the base plus its delta, as the Rust trainer does.
    rng = np.random.default_rng(6)
    vocab, steps, streams, modules = 12, 5, 3, 3
    model = modula.LanguageModel(
        vocab, seed=2, embed=8, hidden=8, modules=modules, k=1, shared_base=True
    )
    ids = rng.integers(0, vocab, size=(steps, streams))
    targets = rng.integers(0, vocab, size=(steps, streams))
    _, h = model.nll(ids, targets)
    em = modula.EM(model, examples=steps * streams, samples=3, seed=2)
    keys = np.arange(steps * streams).reshape(steps, streams)
    before = model.parameters()
    em.m_step((ids, targets, h), keys)
    after = model.parameters()
    base = "gru.recurrent.base.weight"
    assert not np.array_equal(after[base], before[base])
    for side in ("gru.input", "gru.recurrent"):
        for part in ("weight", "bias"):
            shared = np.tile(after[f"{side}.base.{part}"], (modules, 1))
            np.testing.assert_allclose(
                after[f"{side}.{part}"],
                shared + after[f"{side}.delta.{part}"],
                atol=1e-6,
                err_msg=f"{side}.{part}",
            )
