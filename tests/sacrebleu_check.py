"""Corpus BLEU of a hypothesis file against a reference file with sacreBLEU, for
tests/seq2seq.rs to compare kiln's scores with.

    python tests/sacrebleu_check.py HYPOTHESES REFERENCES

Prints one JSON object: the score with sacreBLEU's defaults (13a, case-sensitive,
smooth_method="exp") and with smoothing off (smooth_method="none").
"""
import json
import sys

from sacrebleu.metrics import BLEU


def lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


hypotheses, references = lines(sys.argv[1]), lines(sys.argv[2])
scores = {method: BLEU(smooth_method=method).corpus_score(hypotheses, [references]).score for method in ("exp", "none")}
print(json.dumps(scores))
