"""Hugging Face `tokenizers` side of `kiln bench tokenizer --compare-hf`.

Trains a byte-level BPE (BpeTrainer, ByteLevel pre-tokenizer and alphabet, the same vocab
size and special tokens as kiln) on the given files, then encodes their text; prints one
JSON object of figures. Peak memory is measured as kiln measures its own (Linux): the peak
resident size is reset to the current size just before training (/proc/self/clear_refs)
and read after it (VmHWM); baseline_rss_mb is the resident size before training, i.e. the
Python interpreter and the tokenizers module. (ru_maxrss would not do: Linux carries it
over from the parent process.)
"""
import argparse
import json
import time

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--special", action="append", default=[])
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    baseline = status_mb("VmRSS")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        special_tokens=args.special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    reset_peak()
    start = time.perf_counter()
    tokenizer.train(args.files, trainer)
    train_seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")

    text = "".join(open(f, encoding="utf-8").read() for f in args.files)
    start = time.perf_counter()
    tokens = len(tokenizer.encode(text).ids)
    encode_seconds = time.perf_counter() - start
    chunks = [text[i : i + (1 << 18)] for i in range(0, len(text), 1 << 18)]
    start = time.perf_counter()
    tokenizer.encode_batch(chunks)
    encode_batch_seconds = time.perf_counter() - start

    print(json.dumps({
        "train_seconds": train_seconds,
        "peak_rss_mb": peak,
        "baseline_rss_mb": baseline,
        "vocab_size": tokenizer.get_vocab_size(),
        "encode_seconds": encode_seconds,
        "encode_batch_seconds": encode_batch_seconds,
        "tokens": tokens,
        "version": tokenizers.__version__,
    }))


if __name__ == "__main__":
    main()
