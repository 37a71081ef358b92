"""The rules every verdict of ``minilora findings`` follows, and the helpers that apply them.

    ACC_FLOOR  1 point: accuracy differences below it are not resolved by a few hundred test examples
    MARGIN     2 points: "about as good" allows a trailing method this much
    a comparison is judged only if its runs learned: every seed at least MIN_GAIN above chance
    (0% exact match for generation, 50% for the balanced yes/no tasks); otherwise "not judged"

The claims (``minilora.experiments.findings_verdicts``) and the paper's §7 findings
(``minilora.experiments.findings_section7``) both build their rows with these helpers.
"""
from __future__ import annotations

from minilora.data.tasks import get_task
from minilora.experiments import stats
from minilora.experiments.results import Results
from minilora.experiments.stats import Summary

ACC_FLOOR, MARGIN, MIN_GAIN = 0.01, 0.02, 0.2
NOT_JUDGED = "not judged"


def results(data: dict, *keys) -> Results:
    """The Results of one or more recorded sections ("grid", "curves", ...), combined."""
    out = Results.from_dict(data[keys[0]])
    for k in keys[1:]:
        out = out + Results.from_dict(data[k])
    return out


def pct(s: Summary) -> str:
    return s.fmt(100, 1, "%")


def row(section: str, v: stats.Verdict, measured: str) -> dict:
    return {"section": section, "claim": v.claim, "measured": measured, "verdict": v.verdict, "rule": v.rule}


def chance(task: str) -> float:
    """Accuracy without learning: 0 for exact-match generation, 1/2 for the balanced yes/no tasks."""
    return 0.5 if get_task(task).kind == "classification" else 0.0


def not_learned(summaries: dict, task: str, *, any_ok: bool = False) -> str | None:
    """Why a comparison of these {name: Summary} cannot be judged (runs stayed near chance), or None.

    any_ok: one method that learned is enough (when failing to learn is the measurement itself, e.g.
    with few training examples); otherwise every method must have learned.
    """
    c = chance(task)
    bad = [m for m, s in summaries.items() if not stats.learned(s, chance=c, min_gain=MIN_GAIN)]
    if bad and (not any_ok or len(bad) == len(summaries)):
        return "; ".join(f"{m} did not learn {task} (best seed {100 * max(summaries[m].values):.1f}%, chance "
                         f"{100 * c:.0f}%)" for m in bad)
    return None


def guarded(section: str, claim: str, summaries: dict, task: str, make, *, any_ok: bool = False) -> dict:
    """``make()`` -> (Verdict, measured), unless the runs behind ``summaries`` did not learn: then a
    "not judged" row that says which runs stayed at chance."""
    why = not_learned(summaries, task, any_ok=any_ok)
    if why:
        return {"section": section, "claim": claim, "measured": "", "verdict": NOT_JUDGED, "rule": why}
    v, measured = make()
    return dict(row(section, v, measured), claim=claim)


def if_learned(rows: list[dict], summaries: dict, task: str) -> list[dict]:
    """``rows`` as they are if the runs behind ``summaries`` learned; else each row "not judged"."""
    why = not_learned(summaries, task)
    return rows if not why else [dict(r, measured="", verdict=NOT_JUDGED, rule=why) for r in rows]
