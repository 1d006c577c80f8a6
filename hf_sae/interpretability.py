"""How far to trust a feature's automatic label, measured without an LLM from what `hf-sae features` collects.

A feature's label names its token set T: the peak tokens that recur among its top contexts (up to three, as
`auto_label` shows them; tokens compare by class, their trimmed text, so ' Paris' and 'Paris' are one). Then

    consistency  c = share of the top contexts whose peak token is in T
    recall       r = share of a uniform sample of the feature's firings whose peak token is in T
    precision    p = firings on T / occurrences of T in the text, estimated as r * count / occurrences(T), at most 1
    score        = 3 / (1/c + 1/r + 1/p), their harmonic mean: 0 when T is empty or any of them is 0

so a feature scores high only when its strongest contexts agree on a token (c), its typical firings are on that token
too (r), and the token predicts it fires (p). The top contexts and the sample are drawn on the same text; precision
and recall are those of the label read as a rule, "fires exactly on T", much as the detection score of an LLM
explanation (Bills et al. 2023, "Language models can explain neurons in language models"; EleutherAI delphi), with
the token set in place of the explainer. It sees single-token patterns only: a feature of a context (French text,
code) that fires on varied tokens scores low whatever a person would say of it.

CLEAR_PATTERN is fixed from the formula, before any feature was judged: at 0.5 the harmonic mean of three shares
needs each of them at 0.25 or more (the other two at 1), and all three at one half meet it: the label's tokens are
the peak of about half the top contexts and half the firings, and fire the feature about half the time they occur.
DENSE_FREQUENCY: a default SAE (k 32 of 9,216 latents) fires a latent on k / width = 0.35% of tokens on average; a
latent firing on more than 1% of them, about three times that, answers to position or to the commonest tokens rather
than to a concept, and clamping it rarely steers (see docs/features.md).
"""

import math
from collections import Counter

CLEAR_PATTERN = 0.5  # the score from which a feature's automatic label is shown as a label
DENSE_FREQUENCY = 0.01  # a latent firing on more than this share of the counted tokens is dense
NO_CLEAR_PATTERN = "no clear pattern"
LABEL_TOKENS = 3  # tokens in a label's set at most
FORMULA = "harmonic mean of consistency c, recall r and precision p of the label's token set: 3 / (1/c + 1/r + 1/p)"


def show_token(text: str) -> str:
    """A token as a label shows it, and its class for the score: trimmed, with newlines and blanks made visible."""
    stripped = text.strip()
    return stripped if stripped else ("⏎" if "\n" in text else "␣")


def label_tokens(peak_tokens: list[str]) -> list[str]:
    """The label's token set T: the classes of the peak tokens that recur (at least twice), most frequent first."""
    return [token for token, n in Counter(map(show_token, peak_tokens)).most_common(LABEL_TOKENS) if n >= 2]


def harmonic_mean(*shares: float) -> float:
    return 0.0 if min(shares) <= 0 else len(shares) / sum(1 / s for s in shares)


def label_score(top_peaks: list[str], sampled_peaks: list[str], count: int, occurrences: Counter) -> dict:
    """`{"consistency", "label_recall", "label_precision", "interpretability"}` of one feature, from the peak tokens
    of its top contexts and of its sampled firings, its firing count, and how often each token class occurs in the
    counted text (`occurrences`)."""
    label = set(label_tokens(top_peaks))
    if not label or not sampled_peaks:
        return {"consistency": 0.0, "label_recall": 0.0, "label_precision": 0.0, "interpretability": 0.0}
    consistency = sum(show_token(t) in label for t in top_peaks) / len(top_peaks)
    recall = sum(show_token(t) in label for t in sampled_peaks) / len(sampled_peaks)
    occurring = sum(occurrences[token] for token in label)
    precision = min(1.0, recall * count / occurring) if occurring else 0.0
    return {
        "consistency": consistency,
        "label_recall": recall,
        "label_precision": precision,
        "interpretability": harmonic_mean(consistency, recall, precision),
    }


def interpretability_summary(scores: list[float], frequencies: list[float]) -> dict:
    """What metadata.json and the card state: the rule, the threshold, and the share of the features that fired
    (those with a score) that pass it; the dense threshold and how many latents pass that."""
    fired = [s for s in scores if s is not None and not math.isnan(s)]
    return {
        "formula": FORMULA,
        "threshold": CLEAR_PATTERN,
        "clear_pattern_share": sum(s >= CLEAR_PATTERN for s in fired) / len(fired) if fired else None,
        "scored_features": len(fired),
        "dense_threshold": DENSE_FREQUENCY,
        "dense_latents": sum(f > DENSE_FREQUENCY for f in frequencies),
    }


def text_note(metadata: dict) -> str:
    """The text feature metadata describes, in words: `held-out text (test)`, `training text (train)`; empty where
    the metadata does not record it (the statistics, labels and scores are only as good as that text is new)."""
    text = metadata.get("text") or {}
    return f"{'held-out' if text.get('held_out') else 'training'} text ({text['split']})" if text.get("split") else ""
