"""Hugging Face `transformers` side of kiln's GPT-2 interop tests (tests/interop.rs).

  hf_gpt2.py logits DIR BATCH_JSON OUT_JSON
      Loads DIR (written by `kiln export`) with GPT2LMHeadModel.from_pretrained, refusing
      missing, unexpected or mismatched tensors, and writes the logits of the token batch in BATCH_JSON ([[id, ...], ...]) to OUT_JSON.
  hf_gpt2.py random DIR PROMPT_JSON OUT_JSON
      Saves a small randomly initialised GPT2LMHeadModel (GPT-2's vocabulary, tanh GELU, as
      GPT-2 has) to DIR with save_pretrained, then writes its greedy continuation of the
      prompt ids in PROMPT_JSON to OUT_JSON.
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

NEW_TOKENS = 24


def logits(model_dir, batch_path, out_path):
    # AutoModelForCausalLM, as a user would: config.json's model_type must pick GPT-2.
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    if not isinstance(model, GPT2LMHeadModel):
        sys.exit(f"{model_dir} loaded as {type(model).__name__}, not GPT2LMHeadModel")
    problems = {k: v for k, v in info.items() if v}
    if problems:
        sys.exit(f"{model_dir} did not load cleanly: {problems}")
    model.eval()
    with open(batch_path) as f:
        batch = torch.tensor(json.load(f), dtype=torch.long)
    with torch.no_grad():
        out = model(batch).logits
    with open(out_path, "w") as f:
        json.dump(out.tolist(), f)


def random_model(model_dir, prompt_path, out_path):
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=50257,
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        # Wider than GPT-2's 0.02 so that greedy choices are not near-ties decided by rounding.
        initializer_range=0.2,
    )
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    with open(prompt_path) as f:
        prompt = torch.tensor([json.load(f)], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=config.eos_token_id,
            eos_token_id=None,
        )
    with open(out_path, "w") as f:
        json.dump(out[0, prompt.shape[1]:].tolist(), f)


if __name__ == "__main__":
    commands = {"logits": logits, "random": random_model}
    if len(sys.argv) != 5 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
