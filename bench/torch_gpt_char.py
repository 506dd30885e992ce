"""PyTorch reference for kiln's char-level GPT runs (configs/small.toml by default).

The same architecture, initialisation, optimizer and schedule as kiln (and nanoGPT's
shakespeare_char CPU recipe), written plainly in PyTorch, so that val loss and tokens/s can
be compared on one machine:

    .venv/bin/python bench/torch_gpt_char.py --seed 1337

It prints the estimate nanoGPT reports (mean of `eval_iters` random val batches) and the loss
over every non-overlapping window of the val split (what `kiln eval --full` prints).
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads, bias=False):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d, bias=bias)
        self.c_attn = nn.Linear(d, 3 * d, bias=bias)
        self.attn_proj = nn.Linear(d, d, bias=bias)
        self.ln_2 = nn.LayerNorm(d, bias=bias)
        self.c_fc = nn.Linear(d, 4 * d, bias=bias)
        self.mlp_proj = nn.Linear(4 * d, d, bias=bias)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class Gpt(nn.Module):
    def __init__(self, vocab, block, d, heads, layers, bias=False):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, heads, bias) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, bias=bias)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def logits(self, idx, last_only=False):
        pos = torch.arange(idx.shape[1])
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        if last_only:  # what nanoGPT's sampling computes
            x = x[:, -1:, :]
        return self.ln_f(x) @ self.wte.weight.t()  # tied LM head

    def forward(self, idx, targets):
        logits = self.logits(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def lr_at(it, a):
    if it < a.warmup:
        return a.lr * (it + 1) / (a.warmup + 1)
    ratio = (it - a.warmup) / max(1, a.iters - a.warmup)
    return a.min_lr + 0.5 * (1 + math.cos(math.pi * min(ratio, 1.0))) * (a.lr - a.min_lr)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="data/tinyshakespeare.txt")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = PyTorch's default)")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    if a.threads:
        torch.set_num_threads(a.threads)

    text = open(a.data, encoding="utf-8").read()
    chars = sorted(set(text))
    ids = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([ids[c] for c in text])
    n_val = round(len(data) * 0.1)
    train, val = data[: len(data) - n_val], data[len(data) - n_val :]

    def batch(split, n):
        starts = torch.randint(len(split) - a.block, (n,))
        return torch.stack([split[s : s + a.block] for s in starts]), torch.stack([split[s + 1 : s + a.block + 1] for s in starts])

    model = Gpt(len(chars), a.block, a.d_model, a.heads, a.layers)
    decay = [q for q in model.parameters() if q.dim() >= 2]
    no_decay = [q for q in model.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.99), eps=1e-8)
    started = time.time()
    for it in range(a.iters):
        for group in opt.param_groups:
            group["lr"] = lr_at(it, a)
        x, y = batch(train, a.batch)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    wall = time.time() - started

    model.eval()
    with torch.no_grad():
        sampled = sum(model(*batch(val, a.batch)).item() for _ in range(a.eval_iters)) / a.eval_iters
        starts = list(range(0, len(val) - a.block, a.block))
        total = 0.0
        for i in range(0, len(starts), a.batch):
            chunk = starts[i : i + a.batch]
            x = torch.stack([val[s : s + a.block] for s in chunk])
            y = torch.stack([val[s + 1 : s + a.block + 1] for s in chunk])
            total += model(x, y).item() * len(chunk)
        full = total / len(starts)
    tokens = a.iters * a.batch * a.block
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, seed {a.seed}")
    print(f"train: {a.iters} steps in {wall:.1f}s, {tokens / wall:.0f} tokens/s, {1000 * wall / a.iters:.1f} ms/step")
    print(f"val loss: {sampled:.4f} ({a.eval_iters} random batches), {full:.4f} (all {len(starts)} windows)")


if __name__ == "__main__":
    main()
