"""Write a nanoGPT checkpoint (`out-*/ckpt.pt`) as a Hugging Face GPT-2 folder that
`kiln import` reads, so kiln can score nanoGPT's own model on kiln's validation windows:

    .venv/bin/python bench/nanogpt_to_hf.py out-shakespeare-char/ckpt.pt /tmp/nanogpt-hf \\
        --tokenizer artifacts/small/tokenizer.json
    kiln import --from /tmp/nanogpt-hf --out artifacts/nanogpt
    kiln eval --run artifacts/nanogpt --data data/tinyshakespeare.txt [--full]

nanoGPT's `nn.Linear` weights are `[out, in]`; GPT-2's Conv1D layout is `[in, out]`, so the
three projections of each block are transposed. A model trained with `bias=False` gets zero
biases, which compute the same function. For a char-level run, `--tokenizer` copies a kiln
char tokenizer (sorted unique characters, the vocabulary nanoGPT's `prepare.py` builds) into
the folder as `kiln_tokenizer.json`.
"""
import argparse
import shutil

import torch
from transformers import GPT2Config, GPT2LMHeadModel

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint", help="nanoGPT's ckpt.pt")
    p.add_argument("out", help="folder to write config.json and model.safetensors into")
    p.add_argument("--tokenizer", help="a kiln tokenizer.json to ship as kiln_tokenizer.json")
    a = p.parse_args()

    ckpt = torch.load(a.checkpoint, map_location="cpu")
    args = ckpt["model_args"]
    # torch.compile'd runs save their parameters under `_orig_mod.`.
    weights = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    config = GPT2Config(
        vocab_size=args["vocab_size"], n_positions=args["block_size"], n_embd=args["n_embd"],
        n_layer=args["n_layer"], n_head=args["n_head"], n_inner=4 * args["n_embd"],
        activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
    )
    model = GPT2LMHeadModel(config)
    hf_state = model.state_dict()
    state = {}
    for name, like in hf_state.items():
        if name in weights:
            w = weights[name]
            state[name] = (w.t() if name.endswith(CONV1D) else w).contiguous()
        elif name.endswith(".bias") and name.removesuffix(".bias") + ".weight" in hf_state:
            state[name] = torch.zeros_like(like)
        else:
            raise SystemExit(f"{a.checkpoint}: no tensor for {name}; is this a nanoGPT GPT checkpoint?")
    model.load_state_dict(state)
    model.save_pretrained(a.out)
    if a.tokenizer:
        shutil.copy(a.tokenizer, f"{a.out}/kiln_tokenizer.json")
    print(f"wrote {a.out}: {sum(t.numel() for t in model.parameters())} parameters, step {ckpt['iter_num']}, "
          f"nanoGPT's val loss {float(ckpt['best_val_loss']):.4f}")


if __name__ == "__main__":
    main()
