"""Builds the two corpora of the BPE benchmark (issue: training speed vs Hugging Face).

  python3 bench/make_bpe_corpus.py SHARED_DATA_DIR OUT_DIR

writes OUT_DIR/shared-corpora.txt (6.6 MB), the concatenation of every corpus in SHARED_DATA_DIR
(tinyshakespeare, the-verdict, TinyStories sample, sales textbook, Multi30k de and en,
gunzipped), and OUT_DIR/shared-corpora-100mb.txt, its lines repeated in a fresh seeded shuffle per
pass until the file reaches 100 MB.
"""
import gzip
import pathlib
import random
import sys

SOURCES = [
    "tinyshakespeare/input.txt",
    "the-verdict/the-verdict.txt",
    "tinystories/tinystories_val.txt",
    "sales-textbook/sales_textbook.txt",
    "multi30k/train.de.gz",
    "multi30k/train.en.gz",
    "multi30k/val.de.gz",
    "multi30k/val.en.gz",
    "multi30k/test_2016_flickr.de.gz",
    "multi30k/test_2016_flickr.en.gz",
]
LARGE_BYTES = 100_000_000


def read(path):
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    text = data.decode("utf-8")
    return text if text.endswith("\n") else text + "\n"


def main(shared, out):
    shared, out = pathlib.Path(shared), pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    small = "".join(read(shared / s) for s in SOURCES)
    (out / "shared-corpora.txt").write_text(small, encoding="utf-8")
    lines = small.splitlines(keepends=True)
    rng = random.Random(0)
    size = 0
    with open(out / "shared-corpora-100mb.txt", "w", encoding="utf-8") as f:
        while size < LARGE_BYTES:
            rng.shuffle(lines)
            for line in lines:
                f.write(line)
                size += len(line.encode("utf-8"))
                if size >= LARGE_BYTES:
                    break
    print(f"{out / 'shared-corpora.txt'}: {len(small.encode('utf-8'))} bytes; {out / 'shared-corpora-100mb.txt'}: {size} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
