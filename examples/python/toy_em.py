"""Modular networks from Python, notebook style: each `# %%` block is a cell.

Trains the toy decomposition task with `modula.train` (the run `modula train` would make),
then drives EM step by step from a loop of our own, and plots the loss and the module usage
with matplotlib when it is installed (without it, the plots are skipped and the script says
so). Run it from anywhere: `python3 examples/python/toy_em.py`; it writes `runs/` and
`toy_em.png` in the current directory. MODULA_EXAMPLE_STEPS shortens the run (CI uses it).
"""

# %% A run of the toy task: one modular layer of 6 linear modules, one per input.
import os

import numpy as np

import modula

steps = int(os.environ.get("MODULA_EXAMPLE_STEPS", "20000"))
run = modula.train({"seed": 0}, out=f"runs/toy-em-example-{os.getpid()}", steps=steps, progress=False)
summary = run.summary
print(f"{run.path}: test MSE {summary['test_loss']:.4f} (linear baseline "
      f"{summary['linear_baseline_mse']:.4f}), purity {summary['purity']:.3f}, "
      f"effective modules {summary['effective_modules']:.2f}")

metrics = run.metrics
records = metrics.to_dict("records") if hasattr(metrics, "to_dict") else metrics
trained = [r for r in records if r.get("task_nll") is not None]

# %% The same algorithm in our own loop: two linear regimes split by the sign of x[0].
rng = np.random.default_rng(0)
x = rng.normal(size=(512, 2)).astype(np.float32)
y = np.where(x[:, :1] > 0, x @ [[2.0], [1.0]], x @ [[-1.0], [3.0]]).astype(np.float32)
model = modula.ModularMlp(d_in=2, d_out=1, modules=2, k=1, seed=0)
em = modula.EM(model, examples=len(x), samples=10, lr=0.02, seed=0)
own_loss = []
for epoch in range(30):
    for start in range(0, len(x), 64):
        rows = np.arange(start, start + 64)
        if epoch % 3 == 0:
            em.e_step((x[rows], y[rows]), rows)
        else:
            own_loss.append(em.m_step((x[rows], y[rows]), rows)["nll"])
routes = em.assignments(np.arange(len(x)))[:, 0]
agreement = max(np.mean(routes == (x[:, 0] > 0)), np.mean(routes != (x[:, 0] > 0)))
print(f"own loop: final NLL {own_loss[-1]:.3f}; the stored routes follow the regimes "
      f"for {agreement:.0%} of the examples")

# %% Plots: the run's training loss, its module usage, and our loop's loss.
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed; skipping the plots (pip install matplotlib to draw them)")
else:
    fig, (loss_ax, usage_ax, own_ax) = plt.subplots(1, 3, figsize=(13, 3.5))
    loss_ax.plot([r["step"] for r in trained], [r["task_nll"] for r in trained])
    loss_ax.set(title="modula.train: task NLL", xlabel="step")
    usage = summary["usage"][0]
    usage_ax.bar(range(len(usage)), usage)
    usage_ax.set(title="test examples per module", xlabel="module")
    own_ax.plot(own_loss)
    own_ax.set(title="own EM loop: M-step NLL", xlabel="M-step")
    fig.tight_layout()
    fig.savefig("toy_em.png")
    print("plots written to toy_em.png")
