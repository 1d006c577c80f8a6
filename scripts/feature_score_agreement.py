"""How well the interpretability score of `hf-sae features` agrees with blind hand judgements of the same features.

    python scripts/feature_score_agreement.py                                  # docs/data/feature_judgements.json
    python scripts/feature_score_agreement.py --judgements FILE --sae COPY --json out.json   # a copy with scores

The judgements file names the SAE (`sae`, a folder with features/ from `hf-sae features`) and holds one judgement per
latent: "interpretable", "borderline" or "not". Reported: the AUC of the score for "interpretable" against the rest
(borderline counted as not) and against "not" alone (borderline left out), and the accuracy of "score >= threshold"
as a prediction of "interpretable", at the threshold the metadata records (fixed before any judgement was seen).
"""

import argparse
import json
import math
from pathlib import Path

from hf_sae.autointerp import auroc
from hf_sae.feature_store import load_features

JUDGEMENTS = Path(__file__).resolve().parents[1] / "docs" / "data" / "feature_judgements.json"


def agreement(judged: list[dict], scores: list[float], threshold: float) -> dict:
    """AUCs and accuracy at `threshold` of `scores` against the judgements, one score per judged latent."""
    kinds = [j["judgement"].strip().lower() for j in judged]
    interpretable = [k == "interpretable" for k in kinds]
    clear = [s >= threshold for s in scores]
    strict = [(k == "interpretable", s) for k, s in zip(kinds, scores) if k != "borderline"]
    return {
        "features": len(judged),
        "counts": {kind: kinds.count(kind) for kind in sorted(set(kinds))},
        "threshold": threshold,
        "auc_interpretable_vs_rest": auroc(interpretable, scores),
        "auc_interpretable_vs_not": auroc([y for y, _ in strict], [s for _, s in strict]),
        "accuracy_at_threshold": sum(c == y for c, y in zip(clear, interpretable)) / len(judged),
        "above_threshold": sum(clear),
        "precision_at_threshold": (sum(c and y for c, y in zip(clear, interpretable)) / sum(clear))
        if any(clear)
        else None,
        "recall_at_threshold": (
            sum(c and y for c, y in zip(clear, interpretable)) / sum(interpretable) if any(interpretable) else None
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judgements", default=str(JUDGEMENTS), help="the hand judgements (JSON)")
    parser.add_argument("--sae", help="the SAE folder to read the scores from (default: the file's `sae`)")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    record = json.loads(Path(args.judgements).read_text())
    record["sae"] = args.sae or record["sae"]
    features = load_features(Path(record["sae"]).expanduser())
    if "interpretability" not in features.stats_table.column_names:
        raise SystemExit(
            f"{record['sae']}'s feature metadata has no interpretability score: run `hf-sae features` again."
        )
    column = features.stats_table.column("interpretability").to_pylist()
    judged = record["judgements"]
    scores = [
        0.0 if column[j["latent"]] is None or math.isnan(column[j["latent"]]) else column[j["latent"]] for j in judged
    ]
    result = agreement(judged, scores, features.metadata["interpretability"]["threshold"])
    result |= {"sae": record["sae"], "text": features.text_note, "tokens": features.metadata.get("tokens")}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
