"""Interop between kiln's byte-level BPE and Hugging Face `tokenizers` (run by tests/bpe.rs).

  check TOKENIZER CASES   Load kiln's tokenizer.json with tokenizers.Tokenizer.from_file and
                          require, for every case, the same ids as kiln and the text back
                          from decode. CASES: JSON list of {"text": str, "ids": [int]}.
  train CORPUS VOCAB OUT TEXTS
                          Train a byte-level BPE with tokenizers' BpeTrainer, save it to OUT
                          and print the ids of each text in TEXTS (a JSON list) as JSON, for
                          kiln to load and compare.
"""
import json
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def check(tokenizer_path, cases_path):
    tokenizer = Tokenizer.from_file(tokenizer_path)
    with open(cases_path, encoding="utf-8") as f:
        cases = json.load(f)
    failures = 0
    for i, case in enumerate(cases):
        ids = tokenizer.encode(case["text"]).ids
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if ids != case["ids"] or text != case["text"]:
            failures += 1
            print(f"case {i}: {case['text']!r}\n  kiln: {case['ids']}\n  hf:   {ids}\n  decoded: {text!r}")
    print(f"{len(cases) - failures}/{len(cases)} texts encode to kiln's ids with tokenizers {sys.modules['tokenizers'].__version__}")
    return 1 if failures else 0


def train(corpus, vocab_size, out, texts_path):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([corpus], trainer)
    tokenizer.save(out)
    with open(texts_path, encoding="utf-8") as f:
        texts = json.load(f)
    print(json.dumps([tokenizer.encode(t).ids for t in texts]))
    return 0


if __name__ == "__main__":
    commands = {"check": check, "train": train}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    sys.exit(commands[sys.argv[1]](*sys.argv[2:]))
