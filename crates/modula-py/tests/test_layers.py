"""The modular layer and the controller against numpy references on random inputs."""

import numpy as np
import pytest

import modula


def reference_forward(x, selection, weight, bias):
    """y[i] = sum over the distinct modules m of selection[i] of x[i] W_m + b_m, in float64."""
    y = np.zeros((x.shape[0], weight.shape[2]))
    for i, row in enumerate(selection):
        for m in set(row.tolist()):
            y[i] += x[i].astype(np.float64) @ weight[m] + bias[m]
    return y


def reference_backward(x, selection, weight, dy):
    """dL/dx and the weight and bias gradients of `reference_forward`, in float64."""
    dx = np.zeros(x.shape)
    dw = np.zeros(weight.shape)
    db = np.zeros((weight.shape[0], weight.shape[2]))
    for i, row in enumerate(selection):
        for m in set(row.tolist()):
            dx[i] += dy[i] @ weight[m].T
            dw[m] += np.outer(x[i], dy[i])
            db[m] += dy[i]
    return dx, dw, db


@pytest.mark.parametrize("n,d_in,d_out,modules,k,seed", [
    (1, 1, 1, 1, 1, 0),
    (7, 5, 3, 4, 2, 1),
    (64, 16, 9, 6, 3, 2),
    (33, 8, 12, 2, 4, 3),
])
def test_forward_and_backward_match_numpy(n, d_in, d_out, modules, k, seed):
    rng = np.random.default_rng(seed)
    layer = modula.ModularLinear(d_in, d_out, modules, k, seed=seed)
    # Random biases too, so that a bias added once per pair (not per slot) is checked.
    layer.bias = rng.normal(size=(modules, d_out)).astype(np.float32)
    x = rng.normal(size=(n, d_in)).astype(np.float32)
    selection = rng.integers(0, modules, size=(n, k))
    y = layer.forward(x, selection)
    assert y.shape == (n, d_out) and y.dtype == np.float32
    np.testing.assert_allclose(
        y, reference_forward(x, selection, layer.weight, layer.bias), rtol=1e-4, atol=1e-5
    )
    dy = rng.normal(size=(n, d_out)).astype(np.float32)
    dx = layer.backward(dy)
    want_dx, want_dw, want_db = reference_backward(x, selection, layer.weight, dy)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.weight_grad, want_dw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.bias_grad, want_db, rtol=1e-4, atol=1e-5)


def test_gradients_accumulate_until_zero_grad():
    rng = np.random.default_rng(4)
    layer = modula.ModularLinear(3, 2, 3, 1)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    selection = rng.integers(0, 3, size=(5, 1))
    dy = np.ones((5, 2), np.float32)
    layer.forward(x, selection)
    layer.backward(dy)
    once = layer.weight_grad
    layer.forward(x, selection)
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight_grad, 2 * once, rtol=1e-6)
    layer.zero_grad()
    assert not layer.weight_grad.any()


def test_parameters_round_trip_and_seeds_repeat():
    a = modula.ModularLinear(4, 3, 5, 2, seed=7)
    b = modula.ModularLinear(4, 3, 5, 2, seed=7)
    c = modula.ModularLinear(4, 3, 5, 2, seed=8)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert not np.array_equal(a.weight, c.weight)
    w = np.arange(60, dtype=np.float32).reshape(5, 4, 3)
    a.weight = w
    np.testing.assert_array_equal(a.weight, w)


def test_controller_distributions_greedy_and_log_prob():
    rng = np.random.default_rng(5)
    ctrl = modula.Controller(6, modules=4, k=3, seed=1)
    x = rng.normal(size=(10, 6)).astype(np.float32)
    lp = ctrl.log_probs(x)
    assert lp.shape == (10, 3, 4)
    np.testing.assert_allclose(np.exp(lp).sum(axis=2), 1.0, rtol=1e-5)
    greedy = ctrl.greedy(x)
    np.testing.assert_array_equal(greedy, lp.argmax(axis=2))
    selection = rng.integers(0, 4, size=(10, 3))
    want = np.take_along_axis(lp, selection[:, :, None], axis=2)[:, :, 0].sum(axis=1)
    np.testing.assert_allclose(ctrl.log_prob(x, selection), want, rtol=1e-5, atol=1e-6)


# The 0.999 quantiles of the chi-square distribution by degrees of freedom (tables), so that a
# correct sampler fails one seed in a thousand.
CHI2_999 = {3: 16.266, 5: 20.515}


@pytest.mark.parametrize("modules,k", [(4, 1), (6, 2)])
def test_controller_samples_follow_its_distribution(modules, k):
    rng = np.random.default_rng(6)
    ctrl = modula.Controller(3, modules=modules, k=k, seed=2)
    # Sharper than the initial logits, so that the test tells the modules apart.
    ctrl.weight = (3 * rng.normal(size=(3, k * modules))).astype(np.float32)
    n = 20000
    x = np.repeat(rng.normal(size=(1, 3)).astype(np.float32), n, axis=0)
    probs = np.exp(ctrl.log_probs(x[:1])[0].astype(np.float64))
    draws = ctrl.sample(x)
    assert draws.shape == (n, k)
    for slot in range(k):
        counts = np.bincount(draws[:, slot], minlength=modules)
        expected = n * probs[slot]
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < CHI2_999[modules - 1], (slot, counts, expected)


def test_controller_sampling_is_seeded():
    x = np.ones((50, 2), np.float32)
    a = modula.Controller(2, 5, 2, seed=3)
    b = modula.Controller(2, 5, 2, seed=3)
    np.testing.assert_array_equal(a.sample(x), b.sample(x))


def test_bad_arrays_raise_the_documented_exceptions():
    layer = modula.ModularLinear(4, 2, 3, 2)
    x = np.zeros((5, 4), np.float32)
    sel = np.zeros((5, 2), np.int64)
    with pytest.raises(modula.DTypeError, match="float32"):
        layer.forward(x.astype(np.float64), sel)
    with pytest.raises(TypeError):
        layer.forward(x.tolist(), sel)
    with pytest.raises(modula.ArrayError, match="4 columns"):
        layer.forward(np.zeros((5, 3), np.float32), sel)
    with pytest.raises(modula.ArrayError, match="2 dimensions"):
        layer.forward(np.zeros(4, np.float32), sel)
    with pytest.raises(modula.ArrayError, match="C-contiguous"):
        layer.forward(np.zeros((4, 5), np.float32).T, sel)
    with pytest.raises(modula.ArrayError, match="C-contiguous"):
        layer.forward(np.zeros((5, 8), np.float32)[:, ::2], sel)
    with pytest.raises(modula.ArrayError, match=r"0\.\.3"):
        layer.forward(x, np.full((5, 2), 3))
    with pytest.raises(modula.ArrayError, match=r"0\.\.3"):
        layer.forward(x, np.full((5, 2), -1))
    with pytest.raises(modula.DTypeError, match="integer"):
        layer.forward(x, sel.astype(np.float32))
    with pytest.raises(modula.ArrayError, match=r"\[5, 2\]"):
        layer.forward(x, np.zeros((5, 1), np.int64))
    with pytest.raises(modula.ArrayError, match="no rows"):
        layer.forward(np.zeros((0, 4), np.float32), np.zeros((0, 2), np.int64))
    with pytest.raises(modula.RunError, match="forward"):
        layer.backward(np.zeros((5, 2), np.float32))
    layer.forward(x, sel)
    with pytest.raises(modula.ArrayError, match="rows"):
        layer.backward(np.zeros((4, 2), np.float32))
    # The failed call kept the forward pass, so a correct backward still works.
    assert layer.backward(np.zeros((5, 2), np.float32)).shape == (5, 4)
    with pytest.raises(modula.ArrayError, match="shape"):
        layer.weight = np.zeros((3, 4, 3), np.float32)


@pytest.mark.parametrize("kwargs,field", [
    (dict(d_in=0, d_out=2, modules=3, k=1), "d_in"),
    (dict(d_in=2, d_out=2, modules=0, k=1), "modules"),
    (dict(d_in=2, d_out=2, modules=70000, k=1), "modules"),
    (dict(d_in=2, d_out=2, modules=3, k=0), "k"),
])
def test_bad_sizes_raise_config_errors(kwargs, field):
    with pytest.raises(modula.ConfigError, match=field):
        modula.ModularLinear(**kwargs)
    with pytest.raises(ValueError):
        modula.ModularLinear(**kwargs)
