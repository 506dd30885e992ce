"""Hugging Face `tokenizers` side of `kiln bench tokenizer --compare-hf`.

Trains a byte-level BPE (BpeTrainer, ByteLevel pre-tokenizer and alphabet, the same vocab
size and special tokens as kiln) on the given files, then encodes their text; prints one
JSON object of figures. Peak memory is the process's ru_maxrss, which includes the Python
interpreter (reported as baseline_rss_mb).
"""
import argparse
import json
import resource
import time

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--special", action="append", default=[])
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    baseline = rss_mb()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        special_tokens=args.special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    start = time.perf_counter()
    tokenizer.train(args.files, trainer)
    train_seconds = time.perf_counter() - start
    peak = rss_mb()

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
