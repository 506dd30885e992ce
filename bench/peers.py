"""kiln against its Python peers on this machine, side by side, as a table of ratios.

    .venv/bin/python bench/peers.py --kiln target/release/kiln [--backends tch-cpu,ndarray,flex]
        [--nanogpt PATH/TO/nanoGPT [--compile]]

It first prints the CPU it runs on (model, family and model numbers, the vector extensions
that decide which kernels are fast, cores), then one row per case and backend.

Cases (each peer runs in a process of its own, so its peak RSS is its own):
  train-small  configs/small.toml: ms/iter of kiln against a nanoGPT-shaped PyTorch model
  train-gpt2   configs/gpt2-small-cpu.toml: the same at GPT-2 small's shape, and peak RSS
  generate     500 greedy tokens from a GPT-2-124M-shaped model (random weights): kiln's KV
               cache against nanoGPT's sampling loop (recomputes the context) and against
               Hugging Face transformers' generate (with its cache)

With --nanogpt, the training cases also run nanoGPT's own train.py from that checkout, at the
same shape, batch and optimizer (the median of its logged step times from step 20 on for
train-small, step 2 on for train-gpt2). train-small trains on its data/shakespeare_char,
prepared as its README says; train-gpt2 on random GPT-2 tokens written to a temporary folder
(no meta.pkl, so nanoGPT takes its padded GPT-2 vocabulary). --compile passes
--compile=True to it. nanoGPT's code is run, never copied.

The PyTorch model is bench/torch_gpt_char.py's (nanoGPT's published architecture, eager, no
torch.compile). Ratios as the targets are stated: training is kiln's ms/iter over PyTorch's
(under 1: kiln is faster); generation is kiln's tokens/s over the peer's (over 1: kiln is
faster). The last column is both peak resident sizes.
"""
import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

TRAIN_CASES = {
    # name: (config, batch, block, d_model, heads, layers, vocab, timed steps)
    "train-small": ("configs/small.toml", 12, 64, 128, 4, 4, 65, 50),
    "train-gpt2": ("configs/gpt2-small-cpu.toml", 4, 256, 768, 12, 12, 50257, 10),
}
GPT2 = dict(vocab=50257, block=1024, d=768, heads=12, layers=12)
PROMPT, NEW_TOKENS = 16, 500


# The cpuinfo flags that decide which matrix kernels MKL, oneDNN and gemm pick.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_line():
    """The CPU this runs on, as /proc/cpuinfo names it (Linux), or what the platform says."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    field = lambda name: (re.search(rf"^{name}\s*: (.*)$", info, re.M) or [None, "?"])[1].strip()
    flags = set(field("flags").split())
    have = [f for f in CPU_FLAGS if f in flags]
    return (f"{field('model name')} (family {field('cpu family')}, model {field('model')}), "
            f"{os.cpu_count()} cores, {' '.join(have) or 'no AVX2'}")


def nanogpt_ms(checkout, case, compile_):
    """nanoGPT's own train.py at the case's shape: the median of its logged step times."""
    _, batch, block, d, heads, layers, _, steps = TRAIN_CASES[case]
    if case == "train-small":
        dataset, first = "shakespeare_char", 20
        if not os.path.exists(os.path.join(checkout, "data", dataset, "train.bin")):
            sys.exit(f"--nanogpt: prepare {checkout}/data/{dataset} first (its prepare.py)")
    else:
        # os.path.join("data", "/abs") is "/abs": train.py reads this folder as the dataset.
        dataset, first = random_gpt2_dataset(), 2
    out = subprocess.run(
        [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
         f"--compile={compile_}", f"--dataset={dataset}", "--eval_iters=1", "--eval_interval=100000",
         "--log_interval=1", f"--block_size={block}", f"--batch_size={batch}", f"--n_layer={layers}",
         f"--n_head={heads}", f"--n_embd={d}", "--dropout=0.0", "--bias=False",
         "--gradient_accumulation_steps=1", f"--max_iters={first + steps}", "--lr_decay_iters=2000",
         "--always_save_checkpoint=False", f"--out_dir={tempfile.mkdtemp(prefix='nanogpt-')}"],
        cwd=checkout, check=True, capture_output=True, text=True)
    times = [float(m.group(2)) for m in re.finditer(r"^iter (\d+).*time ([\d.]+)ms", out.stdout, re.M)
             if int(m.group(1)) >= first]
    return statistics.median(times)


def random_gpt2_dataset():
    import numpy as np
    folder = tempfile.mkdtemp(prefix="nanogpt-gpt2-")
    for split in ("train", "val"):
        np.random.default_rng(1337).integers(0, 50257, 200_000, dtype=np.uint16).tofile(
            os.path.join(folder, f"{split}.bin"))
    return folder


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def torch_train(case):
    import torch
    from torch_gpt_char import Gpt

    _, batch, block, d, heads, layers, vocab, steps = TRAIN_CASES[case]
    torch.manual_seed(1337)
    model = Gpt(vocab, block, d, heads, layers)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-4)
    data = torch.randint(vocab, (steps + 5, batch, block + 1))
    for i in range(steps + 5):
        if i == 5:
            started = time.perf_counter()
        loss = model(data[i, :, :-1], data[i, :, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return {"ms_per_iter": 1000 * (time.perf_counter() - started) / steps, "peak_rss_mb": peak_rss_mb()}


def nanogpt_generate():
    import torch
    from torch_gpt_char import Gpt

    torch.manual_seed(1337)
    model = Gpt(GPT2["vocab"], GPT2["block"], GPT2["d"], GPT2["heads"], GPT2["layers"], bias=True).eval()
    idx = torch.randint(GPT2["vocab"], (1, PROMPT))
    with torch.no_grad():
        started = time.perf_counter()
        for _ in range(NEW_TOKENS):  # sample.py: the whole (cropped) context every step
            logits = model.logits(idx[:, -GPT2["block"]:], last_only=True)
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        seconds = time.perf_counter() - started
    return {"tokens_per_sec": NEW_TOKENS / seconds, "peak_rss_mb": peak_rss_mb()}


def hf_generate():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1337)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    idx = torch.randint(GPT2["vocab"], (1, PROMPT))
    args = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True,
                pad_token_id=0, attention_mask=torch.ones_like(idx))
    model.generate(idx, **{**args, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    started = time.perf_counter()
    model.generate(idx, **args)
    return {"tokens_per_sec": NEW_TOKENS / (time.perf_counter() - started), "peak_rss_mb": peak_rss_mb()}


PEERS = {"train-small": lambda: torch_train("train-small"), "train-gpt2": lambda: torch_train("train-gpt2"),
         "nanogpt-generate": nanogpt_generate, "hf-generate": hf_generate}


def in_process(peer):
    """Runs one peer in a fresh interpreter and returns its JSON."""
    out = subprocess.run([sys.executable, __file__, "--peer", peer], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def kiln(binary, *args):
    out = subprocess.run([binary, *args, "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kiln", default="target/release/kiln")
    p.add_argument("--backends", default="tch-cpu,ndarray")
    p.add_argument("--cases", default="train-small,train-gpt2,generate")
    p.add_argument("--repeat", type=int, default=1,
                   help="training cases: run kiln and its peer alternately N times; print the medians "
                        "(ms/iter, and the ratio of each pair) and the largest peak RSS")
    p.add_argument("--nanogpt", help="a checkout of nanoGPT: also time its own train.py")
    p.add_argument("--compile", action="store_true", help="nanoGPT's train.py with --compile=True")
    p.add_argument("--peer", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.peer:
        print(json.dumps(PEERS[a.peer]()))
        return
    import torch
    print(f"cpu: {cpu_line()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; kiln: {a.kiln}")
    print(f"{'case':<12} {'backend':<9} {'kiln':>12} {'peer':>24} {'ratio':>7} {'RSS kiln/peer (MB)':>20}")
    backends = a.backends.split(",")
    for case in a.cases.split(","):
        if case in TRAIN_CASES:
            config, steps = TRAIN_CASES[case][0], TRAIN_CASES[case][-1]
            for backend in backends:
                # Alternately, so that both sides see the same load; medians of each.
                runs = [(in_process(case), kiln(a.kiln, "bench", "train", "--config", config, "--backend", backend, "--iters", str(steps)))
                        for _ in range(a.repeat)]
                peer_ms, kiln_ms = (statistics.median(r[i]["ms_per_iter"] for r in runs) for i in (0, 1))
                ratio = statistics.median(k["ms_per_iter"] / peer["ms_per_iter"] for peer, k in runs)
                peer_rss, kiln_rss = (max(r[i]["peak_rss_mb"] for r in runs) for i in (0, 1))
                print(f"{case:<12} {backend:<9} {kiln_ms:>9.1f} ms {'PyTorch ' + format(peer_ms, '.1f') + ' ms':>24} "
                      f"{ratio:>7.2f} {kiln_rss:>9.0f}/{peer_rss:.0f}")
                if a.nanogpt:
                    # Alternately again: kiln, then nanoGPT's train.py.
                    pairs = [(kiln(a.kiln, "bench", "train", "--config", config, "--backend", backend,
                                   "--iters", str(steps))["ms_per_iter"],
                              nanogpt_ms(a.nanogpt, case, a.compile)) for _ in range(a.repeat)]
                    ms = statistics.median(n for _, n in pairs)
                    ratio = statistics.median(k / n for k, n in pairs)
                    name = f"nanoGPT train.py{' compiled' if a.compile else ''} {ms:.1f} ms"
                    print(f"{case:<12} {backend:<9} {statistics.median(k for k, _ in pairs):>9.1f} ms "
                          f"{name:>24} {ratio:>7.2f}")
        elif case == "generate":
            peers = {"nanoGPT sample": in_process("nanogpt-generate"), "HF generate": in_process("hf-generate")}
            for backend in backends:
                k = kiln(a.kiln, "bench", "generate", "--config", "configs/gpt2-124m.toml", "--backend", backend,
                         "--set", "model.tie_embeddings=true", "--set", "model.qkv_bias=true",
                         "--prompt-tokens", str(PROMPT), "--max-new-tokens", str(NEW_TOKENS))
                for name, peer in peers.items():
                    # tokens/s: the ratio is peer time over kiln time, so > 1 means kiln is faster here.
                    print(f"{case:<12} {backend:<9} {k['tokens_per_sec']:>8.1f} tok/s {name + ' ' + format(peer['tokens_per_sec'], '.1f') + ' tok/s':>24} "
                          f"{k['tokens_per_sec'] / peer['tokens_per_sec']:>6.2f}x {k['peak_rss_mb']:>9.0f}/{peer['peak_rss_mb']:.0f}")
        else:
            sys.exit(f"--cases: unknown case {case!r}; expected train-small, train-gpt2 or generate")


if __name__ == "__main__":
    main()
