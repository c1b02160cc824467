"""chrF: a character n-gram F-score (Popović 2015), as sacrebleu computes it, in [0, 1].

Characters rather than words because the UDHR spans scripts without spaces (Han, Thai)
and rich morphology, where a word match is too coarse to give a tiny model any signal.
Defaults follow sacrebleu's CHRF: n-grams of 1..6 characters, whitespace removed, beta 2
(recall weighs more than precision), precision and recall averaged over the orders that
occur, then combined.
"""

from __future__ import annotations

from collections import Counter


def _ngrams(text: str, n: int) -> Counter[str]:
    return Counter(text[i:i + n] for i in range(len(text) - n + 1))


def chrf(hypothesis: str, reference: str, max_order: int = 6, beta: float = 2.0) -> float:
    hyp = "".join(hypothesis.split())
    ref = "".join(reference.split())
    if not hyp or not ref:
        return float(hyp == ref)
    precision = recall = 0.0
    orders = 0
    for n in range(1, max_order + 1):
        hyp_grams, ref_grams = _ngrams(hyp, n), _ngrams(ref, n)
        if not hyp_grams or not ref_grams:
            # Sacrebleu's effective order: an order longer than either string does not count against it.
            break
        matched = sum((hyp_grams & ref_grams).values())
        precision += matched / sum(hyp_grams.values())
        recall += matched / sum(ref_grams.values())
        orders += 1
    precision, recall = precision / orders, recall / orders
    if precision + recall == 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall)
