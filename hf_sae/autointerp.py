"""Automatic interpretability: an LLM explains each feature from its contexts, and the explanation is scored by how
well an LLM, given only the explanation, predicts where the feature fires.

The method is that of Bills et al. 2023 ("Language models can explain neurons in language models") as simplified by
Paulo et al. 2024 ("Automatically Interpreting Millions of Features in Large Language Models", arXiv 2410.13928;
EleutherAI's delphi): the explainer sees activating contexts with the active tokens marked and writes a short
explanation; two scores check it.

- detection: the scorer is shown a context, unmarked, and asked whether the feature fires anywhere in it; half the
  contexts are activating (held out from those the explainer saw), half are random contexts where it is silent.
- fuzzing: the scorer is shown an activating context with some tokens marked and asked whether the marked tokens are
  the ones the explanation describes; half are marked where the feature fires, half at as many tokens where it
  does not.

Each score is the balanced accuracy of the yes / no answers (0.5 is chance). A local scorer also gives the probability
of "Yes" (from its next-token logits, so an answer never fails to parse), and with it the AUROC, which a scorer's bias
towards one answer does not lower. An endpoint scorer answers in text; answers that say neither yes nor no are left
out of the score and counted. Contexts come from `hf-sae features`: top activations (and the activation-quantile
bins where the metadata has them) and its random contexts (`random_contexts.py`).

    features/explanations.json   {"explainer", "settings", "features": {"<i>": entry}, "control"}, rewritten
                                 atomically after every batch, so a stopped run keeps what it explained
"""

import contextlib
import dataclasses
import math
from collections import Counter

import numpy as np
import pyarrow.compute as pc
from tqdm.auto import tqdm
from transformers.utils import logging

from .errors import ArgumentError, ExplainerError, FeatureMetadataError
from .explainers import EndpointChat, LocalChat, load_chat, parse_yes_no  # noqa: F401 (re-exported: the old home)
from .feature_store import EXPLANATIONS, RANDOM_CONTEXTS, FeatureMetadata

logger = logging.get_logger(__name__)

METHOD = "explanation, detection and fuzzing scores after Bills et al. 2023 and Paulo et al. 2024 (arXiv 2410.13928)"
MARK = "<<{}>>"

EXPLAIN_PROMPT = (
    "We are studying a feature of a language model. Below are text excerpts where it is active; the tokens where it "
    "is most active are marked <<like this>>.\n\n{contexts}\n\nIn at most a dozen words, what does the feature "
    "detect? Answer with the short explanation only."
)
DETECTION_PROMPT = (
    'A feature of a language model is active on: "{explanation}".\n\nText: {text}\n\n'
    "Is the feature active anywhere in this text? Answer Yes or No."
)
FUZZING_PROMPT = (
    'A feature of a language model is active on: "{explanation}".\n\nIn the text below some tokens are marked '
    "<<like this>>.\n\nText: {text}\n\nAre the marked tokens ones this feature would be active on? Answer Yes or No."
)


@dataclasses.dataclass(frozen=True)
class ExplainSettings:
    """How many contexts the explainer sees and the scorers are asked about, and how they are drawn."""

    explain_examples: int = 10  # activating contexts shown to the explainer
    score_examples: int = 5  # held-out activating contexts per score, and as many non-activating ones
    mark_fraction: float = 0.25  # tokens at or above this fraction of a context's peak are marked
    fuzzing: bool = True
    max_new_tokens: int = 32
    seed: int = 0


def parse_explanation(raw: str) -> str | None:
    """The first line of the explainer's answer without a leading "Explanation:" or quotes; None when it holds no
    words (the explanation is then recorded as unusable)."""
    line = next((line.strip() for line in raw.strip().splitlines() if line.strip()), "")
    line = line.split(":", 1)[1].strip() if line.lower().startswith(("explanation:", "answer:")) else line
    line = line.strip("\"'` *").replace("<<", "").replace(">>", "")
    return line[:200] if sum(ch.isalpha() for ch in line) >= 2 else None


# ---- contexts and prompts -------------------------------------------------------------------------------------------


def render(tokens: list[str], marked=()) -> str:
    """A context as one line of text, with the tokens at positions `marked` wrapped in << >>."""
    marked = set(marked)
    text = "".join(MARK.format(t) if i in marked else t for i, t in enumerate(tokens))
    return " ".join(text.replace("\n", " ").split())


def _active(activations: list[float], fraction: float) -> list[int]:
    peak = max(activations, default=0.0)
    return [i for i, a in enumerate(activations) if peak > 0 and a >= fraction * peak]


def sample_contexts(features: FeatureMetadata, index: int, settings: ExplainSettings) -> dict:
    """Feature `index`'s contexts: `explain` (for the explainer), `activating` (held out, for scoring) and `silent`
    (random contexts where it does not fire). The explainer gets every other top context. The scorers get contexts
    sampled from the activation-quantile bins where the metadata has them, as Paulo et al. score across the whole
    range of activations (round-robin over the bins, never a context the explainer saw); else the other top ones."""
    rng = np.random.default_rng([settings.seed, index])
    top = features.examples_table(index).sort_by("rank").to_pylist()
    explain = top[0::2][: settings.explain_examples]
    seen = {(e["block"], e["position"]) for e in explain}
    binned = features.quantile_examples_table(index)
    binned = [e for e in (binned.to_pylist() if binned is not None else []) if (e["block"], e["position"]) not in seen]
    pool = [binned[int(i)] for i in rng.permutation(len(binned))] if binned else top[1::2]
    seen_in_bin, turns = Counter(), []  # each context's turn within its bin: sorting by it interleaves the bins
    for e in pool:
        seen_in_bin[e.get("bin")] += 1
        turns.append(seen_in_bin[e.get("bin")])
    activating = [pool[i] for i in np.argsort(turns, kind="stable")[: settings.score_examples]]
    randoms = features.random_contexts
    fired = randoms.column("fired").combine_chunks()
    rows = np.repeat(np.arange(len(fired)), pc.list_value_length(fired).to_numpy(zero_copy_only=False))
    silent_rows = np.setdiff1d(np.arange(len(fired)), rows[fired.flatten().to_numpy() == index])
    chosen = rng.choice(silent_rows, min(len(activating), len(silent_rows)), replace=False)
    silent = [randoms.column("tokens")[int(i)].as_py() for i in sorted(chosen)]
    return {"explain": explain, "activating": activating, "silent": silent}


def explain_prompt(examples: list[dict], fraction: float) -> str:
    lines = [f"{n}. {render(e['tokens'], _active(e['activations'], fraction))}" for n, e in enumerate(examples, 1)]
    return EXPLAIN_PROMPT.format(contexts="\n".join(lines))


def scoring_prompts(explanation: str, contexts: dict, settings: ExplainSettings, rng) -> list[tuple[str, str, bool]]:
    """(score, prompt, whether the answer should be yes) for one feature's detection and fuzzing questions."""
    items = [("detection", render(e["tokens"]), True) for e in contexts["activating"]]
    items += [("detection", render(tokens), False) for tokens in contexts["silent"]]
    for e in contexts["activating"] if settings.fuzzing else ():
        active = _active(e["activations"], settings.mark_fraction)
        others = [i for i in range(len(e["tokens"])) if i not in set(active)]
        wrong = rng.choice(others, min(len(active), len(others)), replace=False).tolist() if others else []
        items += [("fuzzing", render(e["tokens"], active), True), ("fuzzing", render(e["tokens"], wrong), False)]
    template = {"detection": DETECTION_PROMPT, "fuzzing": FUZZING_PROMPT}
    return [(kind, template[kind].format(explanation=explanation, text=text), label) for kind, text, label in items]


def balanced_accuracy(labels: list[bool], probabilities: list[float | None]) -> float | None:
    """The mean of the true-positive and true-negative rates of `p > 0.5`; None without both classes answered."""
    hits = {True: [], False: []}
    for label, p in zip(labels, probabilities):
        if p is not None:
            hits[label].append((p > 0.5) == label)
    return float(np.mean([np.mean(hits[True]), np.mean(hits[False])])) if hits[True] and hits[False] else None


def auroc(labels: list[bool], probabilities: list[float | None]) -> float | None:
    """P(a positive's probability > a negative's), ties counting half (Mann-Whitney); equals the balanced accuracy
    for 0 / 1 answers."""
    pos = np.array([p for label, p in zip(labels, probabilities) if label and p is not None])
    neg = np.array([p for label, p in zip(labels, probabilities) if not label and p is not None])
    if not len(pos) or not len(neg):
        return None
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def score_explanations(chat, todo: dict[int, tuple[str, dict]], settings: ExplainSettings) -> dict[int, dict]:
    """Detection (and fuzzing) scores of `{feature: (explanation, contexts)}`, every question asked in one batch; a
    feature with a failed question (NaN) has none."""
    asked = []
    for index, (explanation, contexts) in todo.items():
        rng = np.random.default_rng([settings.seed, index, 1])
        asked += [(index, *item) for item in scoring_prompts(explanation, contexts, settings, rng)]
    answers = chat.yes_probability([prompt for _, _, prompt, _ in asked])
    failed = {index for (index, *_), p in zip(asked, answers) if p is not None and math.isnan(p)}
    scores = {}
    for index in (i for i in todo if i not in failed):
        entry = {"unanswered": 0}
        for kind in ("detection", "fuzzing") if settings.fuzzing else ("detection",):
            mine = [(label, p) for (i, k, _, label), p in zip(asked, answers) if i == index and k == kind]
            labels, probabilities = [m[0] for m in mine], [m[1] for m in mine]
            entry[kind], entry[f"{kind}_auroc"] = (
                balanced_accuracy(labels, probabilities),
                auroc(labels, probabilities),
            )
            entry[f"{kind}_questions"] = len(mine)
            entry["unanswered"] += sum(p is None for p in probabilities)
        scores[index] = entry
    return scores


# ---- the run --------------------------------------------------------------------------------------------------------


def _explain_batch(features: FeatureMetadata, chat, batch: list[int], settings: ExplainSettings) -> dict[str, dict]:
    """The batch's entries; a feature whose requests failed has none, so that a later run asks again."""
    contexts = {i: sample_contexts(features, i, settings) for i in batch}
    ready = [i for i in batch if contexts[i]["explain"]]
    raws = chat.generate(
        [explain_prompt(contexts[i]["explain"], settings.mark_fraction) for i in ready], settings.max_new_tokens
    )
    out = {str(i): {"status": "no_contexts", "explanation": None} for i in batch if i not in ready}
    explained = {}
    for index, raw in zip(ready, raws):
        if raw is None:  # the request failed: nothing to record
            continue
        if (explanation := parse_explanation(raw)) is None:
            logger.info("Feature %d: the explainer's answer %r holds no explanation: unusable.", index, raw)
            out[str(index)] = {"status": "unusable", "explanation": None, "raw": raw[:500], "explainer": chat.name}
        else:
            explained[index] = (explanation, contexts[index])
    for index, scores in score_explanations(chat, explained, settings).items():
        out[str(index)] = {"status": "ok", "explanation": explained[index][0], "explainer": chat.name, **scores}
    return out


def explanations_of(features: FeatureMetadata) -> dict:
    """`explanations.json`, checked: a damaged file is one clear error naming it (in `explain`, `browse`, the app)."""
    where = features.path / EXPLANATIONS if features.path is not None else EXPLANATIONS
    try:
        record = features.explanations
    except ValueError as error:  # not JSON, not UTF-8
        problem = f"is not valid JSON ({error})"
    else:
        entries = record.get("features", {}) if isinstance(record, dict) else None
        if isinstance(entries, dict) and all(isinstance(entry, dict) for entry in entries.values()):
            return record
        problem = 'does not hold {"features": {"<id>": {"explanation": ...}}}'
    fix = "Restore it, or delete it and explain the features again with `hf-sae explain`."
    raise FeatureMetadataError(f"{where} {problem}: it is damaged. {fix}")


def _record(features: FeatureMetadata) -> dict:
    record = dict(explanations_of(features))
    record.setdefault("method", METHOD)
    record["features"] = dict(record.get("features", {}))
    return record


@contextlib.contextmanager
def _reporting(chat, progress):
    """`chat.progress` set to `progress` for the block, then unset."""
    chat.progress = progress
    try:
        yield
    finally:
        chat.progress = None


def explain_features(
    features: FeatureMetadata,
    chat,
    indices: list[int] | None = None,
    *,
    max_features: int | None = None,
    batch_size: int = 8,
    settings: ExplainSettings = ExplainSettings(),
    overwrite: bool = False,
) -> dict[int, dict]:
    r"""
    Explain and score features `indices` (default: every feature that fired) with `chat` (`LocalChat` or
    `EndpointChat`), `batch_size` features at a time, saving `explanations.json` after each batch. Features explained
    before are skipped unless `overwrite`; at most `max_features` are explained. Returns the new entries.

    Example:

    ```python
    >>> chat = load_chat("smollm2-135m-instruct", None)
    >>> explain_features(sae.features, chat, [12, 40], settings=ExplainSettings(explain_examples=8))
    {12: {'status': 'ok', 'explanation': 'the word "the"', 'detection': 0.6, 'fuzzing': 0.5, ...}, 40: {...}}
    ```
    """
    require_contexts(features)
    if indices is None:
        indices = np.flatnonzero(features.stats_table.column("count").to_numpy() > 0).tolist()
    record = _record(features)
    todo = [i for i in indices if overwrite or str(i) not in record["features"]][:max_features]
    record |= {"explainer": chat.name, "settings": dataclasses.asdict(settings)}
    failed = []
    with (
        tqdm(total=len(todo), desc="Explaining features", unit="feature") as bar,
        tqdm(total=0, desc="Prompts", leave=False, position=1) as prompts,
        _reporting(chat, prompts),  # the chat counts its tokens and answers within each batch
    ):
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            done = _explain_batch(features, chat, batch, settings)
            record["features"] |= done
            features.save_explanations(record)
            bar.update(len(batch))
            failed += [i for i in batch if str(i) not in done]
            if failed and not done:  # every request of the batch failed: the server is down or refuses us
                failed += todo[start + batch_size :]
                break
    if failed:
        raise ExplainerError(
            f"{len(failed)} of {len(todo)} features were not explained: the explainer's requests failed "
            f"({'; '.join(getattr(chat, 'failures', [])[-1:])}). They are not recorded, so the same command run again "
            f"asks for them; the {len(todo) - len(failed)} others are saved in {features.path or 'memory'}."
        )
    return {i: record["features"][str(i)] for i in todo}


def shuffled_control(
    features: FeatureMetadata, chat, indices: list[int], *, batch_size: int = 8, settings=ExplainSettings()
) -> dict:
    """Detection scores of features `indices` with each one's explanation swapped for another feature's (a random
    derangement), on the same contexts as the real scores, beside the real scores' means: an explanation that means
    something scores above its shuffled control. Saved as `control` in `explanations.json`."""
    record = _record(features)
    ok = [i for i in indices if record["features"].get(str(i), {}).get("status") == "ok"]
    if len(ok) < 2:
        raise ArgumentError(
            f"The shuffled control needs at least 2 features with explanations; {len(ok)} of {indices} have one."
        )
    order = np.random.default_rng(settings.seed).permutation(ok)
    donor = dict(zip(order.tolist(), np.roll(order, 1).tolist()))  # a cycle: nobody keeps their own explanation
    detection_only = dataclasses.replace(settings, fuzzing=False)
    control = {}
    for start in tqdm(range(0, len(ok), batch_size), desc="Shuffled control", unit="batch"):
        todo = {
            i: (record["features"][str(donor[i])]["explanation"], sample_contexts(features, i, settings))
            for i in ok[start : start + batch_size]
        }
        control |= score_explanations(chat, todo, detection_only)
    if missing := [i for i in ok if i not in control]:
        raise ExplainerError(
            f"The shuffled control could not score features {missing[:20]}: the explainer's requests failed "
            f"({'; '.join(getattr(chat, 'failures', [])[-1:])}). The explanations are saved; run again with --control."
        )
    mean = lambda values: float(np.mean(values)) if values else None  # noqa: E731
    summary = {"features": len(ok)}
    for key in ("detection", "detection_auroc"):
        summary[key] = mean([v for i in ok if (v := record["features"][str(i)].get(key)) is not None])
        summary[f"shuffled_{key}"] = mean([v for i in ok if (v := control[i][key]) is not None])
    record["control"] = summary
    features.save_explanations(record)
    return summary


def require_contexts(features: FeatureMetadata) -> None:
    """What explaining reads: random contexts, and explanations.json when there is one (`explanations_of`)."""
    if features.random_contexts is None:
        where = features.path.parent if features.path is not None else "DIR"
        raise FeatureMetadataError(
            f"The feature metadata in {features.path} has no {RANDOM_CONTEXTS}, which scoring draws non-activating "
            f"contexts from (metadata from an older hf-sae). Collect it again with `hf-sae features --sae {where}`."
        )
    explanations_of(features)
