"""Checkpoints in nanoGPT's format, for tests/interop.rs, made without nanoGPT's code: a GPT
with the parameter names and layouts of nanoGPT's model.py (nn.Linear projections, a head
tied to the token embedding, LayerNorm with or without bias), saved as its train.py saves
ckpt.pt (model, optimizer, model_args, iter_num, best_val_loss, config).

  make OUT_DIR VOCAB BIAS COMPILED IDS OUT
      Writes OUT_DIR/ckpt.pt (keys under `_orig_mod.` when COMPILED is 1, as a
      torch.compile'd model saves them), and OUT_DIR/other.pt (a .pt that is not nanoGPT's),
      and writes to OUT the logits (JSON, [batch][time][vocab]) for the token ids in IDS.
"""
import json
import sys

import torch
from torch import nn
from torch.nn import functional as F

N_LAYER, N_HEAD, N_EMBD, BLOCK_SIZE = 2, 4, 32, 32


class Attention(nn.Module):
    def __init__(self, bias):
        super().__init__()
        self.c_attn = nn.Linear(N_EMBD, 3 * N_EMBD, bias=bias)
        self.c_proj = nn.Linear(N_EMBD, N_EMBD, bias=bias)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(N_EMBD, dim=2)
        heads = lambda z: z.view(b, t, N_HEAD, c // N_HEAD).transpose(1, 2)
        y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class Mlp(nn.Module):
    def __init__(self, bias):
        super().__init__()
        self.c_fc = nn.Linear(N_EMBD, 4 * N_EMBD, bias=bias)
        self.c_proj = nn.Linear(4 * N_EMBD, N_EMBD, bias=bias)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, bias):
        super().__init__()
        self.ln_1 = nn.LayerNorm(N_EMBD, bias=bias)
        self.attn = Attention(bias)
        self.ln_2 = nn.LayerNorm(N_EMBD, bias=bias)
        self.mlp = Mlp(bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Gpt(nn.Module):
    def __init__(self, vocab, bias):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, N_EMBD),
            wpe=nn.Embedding(BLOCK_SIZE, N_EMBD),
            h=nn.ModuleList([Block(bias) for _ in range(N_LAYER)]),
            ln_f=nn.LayerNorm(N_EMBD, bias=bias),
        ))
        self.lm_head = nn.Linear(N_EMBD, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx):
        pos = torch.arange(idx.shape[1])
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def make(out_dir, vocab, bias, compiled, ids_path, out_path):
    torch.manual_seed(7)
    vocab, bias, compiled = int(vocab), bias == "1", compiled == "1"
    model = Gpt(vocab, bias)
    with torch.no_grad():
        # Far from the initial values, so that a swapped or untransposed tensor shows.
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("ln_1.weight") else 0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    state = model.state_dict()
    if compiled:
        state = {f"_orig_mod.{k}": v for k, v in state.items()}
    model_args = dict(n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, block_size=BLOCK_SIZE,
                      bias=bias, vocab_size=vocab, dropout=0.0)
    torch.save({
        "model": state, "optimizer": optimizer.state_dict(), "model_args": model_args,
        "iter_num": 250, "best_val_loss": torch.tensor(1.4697), "config": {"dataset": "test"},
    }, f"{out_dir}/ckpt.pt")
    torch.save({"weights": torch.ones(3)}, f"{out_dir}/other.pt")
    with open(ids_path) as f:
        ids = torch.tensor(json.load(f), dtype=torch.long)
    with torch.no_grad():
        logits = model(ids)
    with open(out_path, "w") as f:
        json.dump(logits.tolist(), f)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 8 or sys.argv[1] != "make":
        sys.exit(__doc__)
    sys.exit(make(*sys.argv[2:]))
