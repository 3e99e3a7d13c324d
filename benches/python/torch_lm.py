"""PyTorch CPU training throughput of a word-level GRU language model.

This is a reference point for modula's own dense baseline in the PTB
experiment, not part of the Rust build. It builds the same model:

    Embedding(10000, 256) -> Dropout(0.2) -> GRU(256, H, 1 layer) -> Dropout(0.2)
    -> Linear(H, 10000), cross-entropy averaged over tokens,

trained with Adam (lr 1e-3), gradient-norm clipping at 5.0, truncated BPTT
windows of 35 steps over 32 parallel streams, the hidden state carried
(detached) from one window to the next. The tokens are seeded uniform random
ids: throughput does not depend on them. It times `--windows` full training
steps (forward, backward, clip, Adam) after 3 warm-up windows and reports
tokens per second (35 * 32 tokens per window).

Run (PyTorch installed from PyPI into a venv outside the repo):

    /opt/torch-venv/bin/python benches/python/torch_lm.py --json target/bench/torch_lm.json
    /opt/torch-venv/bin/python benches/python/torch_lm.py --hidden 430 --threads 2
"""

import argparse
import json
import os
import time
import warnings

# The PyPI wheel warns at import when NumPy is absent; this script does not use it.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

VOCAB, EMBED, BPTT, BATCH, WARMUP = 10000, 256, 35, 32, 3


class GruLm(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED)
        self.gru = nn.GRU(EMBED, hidden, num_layers=1, batch_first=False)
        self.drop = nn.Dropout(0.2)
        self.out = nn.Linear(hidden, VOCAB)

    def forward(self, x, h):
        y, h = self.gru(self.drop(self.embed(x)), h)
        return self.out(self.drop(y)), h


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--windows", type=int, default=30)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = GruLm(a.hidden).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    n = WARMUP + a.windows
    data = torch.randint(0, VOCAB, (n * BPTT + 1, BATCH))
    h = torch.zeros(1, BATCH, a.hidden)

    for w in range(n):
        if w == WARMUP:
            start = time.perf_counter()
        x = data[w * BPTT : (w + 1) * BPTT]
        t = data[w * BPTT + 1 : (w + 1) * BPTT + 1]
        h = h.detach()
        logits, h = model(x, h)
        loss = loss_fn(logits.reshape(-1, VOCAB), t.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    elapsed = time.perf_counter() - start

    per_window = elapsed / a.windows
    result = {
        "torch_version": torch.__version__,
        "threads": a.threads,
        "hidden": a.hidden,
        "tokens_per_s": BPTT * BATCH / per_window,
        "seconds_per_window": per_window,
        "windows": a.windows,
    }
    print(
        f"torch {result['torch_version']} threads={a.threads} hidden={a.hidden}: "
        f"{result['tokens_per_s']:.0f} tokens/s, {per_window * 1e3:.1f} ms/window "
        f"over {a.windows} windows (final loss {loss.item():.3f})"
    )
    if a.json:
        os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
