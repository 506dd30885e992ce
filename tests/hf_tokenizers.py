"""Interop between kiln's byte-level BPE and Hugging Face `tokenizers` (run by tests/bpe.rs).

  check TOKENIZER CASES   Load kiln's tokenizer.json with tokenizers.Tokenizer.from_file and
                          require, for every case, the same ids as kiln and the text back
                          from decode. CASES: JSON list of {"text": str, "ids": [int]}.
  train CORPUS VOCAB OUT TEXTS
                          Train a byte-level BPE with tokenizers' BpeTrainer, save it to OUT
                          and print the ids of each text in TEXTS (a JSON list) as JSON, for
                          kiln to load and compare.
  styles CORPUS OUT_DIR TEXTS
                          Train one tokenizer per pipeline kiln's own reader does not cover
                          (GPT-4-style regex split, Llama-2-style SentencePiece BPE with byte
                          fallback, BERT's WordPiece, T5's Unigram), save each to
                          OUT_DIR/<style>.json and print {style: [{"ids", "text"}]}: every
                          text's ids and their decoding.
"""
import json
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# GPT-4's (cl100k) split pattern.
GPT4_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


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


def gpt4_style():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    return tokenizer, trainer


def llama_style():
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tokenizer.decoder = decoders.Sequence([
        decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(" ", 1, 0),
    ])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=900, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens, show_progress=False,
    )
    return tokenizer, trainer


def bert_style():
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=700, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"],
        show_progress=False,
    )
    return tokenizer, trainer


def t5_style():
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=500, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
        show_progress=False,
    )
    return tokenizer, trainer


def styles(corpus, out_dir, texts_path):
    with open(texts_path, encoding="utf-8") as f:
        texts = json.load(f)
    made = {"gpt4": gpt4_style, "llama": llama_style, "bert": bert_style, "t5": t5_style}
    report = {}
    for name, make in made.items():
        tokenizer, trainer = make()
        tokenizer.train([corpus], trainer)
        tokenizer.save(f"{out_dir}/{name}.json")
        encoded = [tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
        report[name] = [
            {"ids": ids, "text": tokenizer.decode(ids, skip_special_tokens=False)} for ids in encoded
        ]
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    commands = {"check": check, "train": train, "styles": styles}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    sys.exit(commands[sys.argv[1]](*sys.argv[2:]))
