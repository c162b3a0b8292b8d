"""The answer-quality metrics on hand-made texts, and the collapse rule built on them."""

import pytest

from trainer.quality import CollapseRule, chrf, distinct, repeated_ngram_rate, text_metrics

REPEATED = ["A\nA\nA\nA\nA\nA\nA\nA", "the the the the the the the the"]
VARIED = [
    "The moon orbits the Earth about once a month and reflects sunlight.",
    "Bread is baked from flour, water, yeast and a pinch of salt.",
]


def test_repeated_lines_score_as_collapsed():
    assert distinct(REPEATED, 1) == pytest.approx(1 / 8)  # one word, eight times
    assert distinct(REPEATED, 2) == pytest.approx(1 / 7)  # one bigram, seven times
    assert repeated_ngram_rate(REPEATED, 3) == pytest.approx(5 / 6)  # 6 trigrams, 5 repeats


def test_varied_text_scores_as_varied():
    assert distinct(VARIED, 1) > 0.9
    assert distinct(VARIED, 2) == pytest.approx(1.0)
    assert repeated_ngram_rate(VARIED, 3) == 0.0


def test_counts_follow_the_definition_on_a_mixed_text():
    text = ["a b a b c"]  # bigrams: ab ba ab bc -> 3 distinct of 4; trigrams: aba bab abc
    assert distinct(text, 2) == pytest.approx(3 / 4)
    assert repeated_ngram_rate(text, 3) == 0.0
    assert repeated_ngram_rate(["a b c a b c"], 3) == pytest.approx(1 / 4)  # abc again


def test_text_metrics_lengths_and_stops():
    m = text_metrics(VARIED + REPEATED, [12, 13, 8, 8], [True, True, False, False])
    assert m["mean_length"] == pytest.approx(10.25)
    assert m["eos_share"] == pytest.approx(0.5)


def test_chrf_rises_with_similarity():
    ref = ["The moon orbits the Earth."]
    assert chrf(ref, ref) == pytest.approx(100.0)
    assert chrf(["The moon goes around the Earth."], ref) > chrf(["A A A A"], ref) + 20


def _eval(texts: list[str]) -> dict[str, float]:
    m = text_metrics(texts, [8] * len(texts), [True] * len(texts))
    return {f"eval/{kind}_{k}": v for kind in ("greedy", "sample") for k, v in m.items()}


def test_collapse_rule_flags_repetition_against_the_teacher():
    teacher = _eval(VARIED)
    reasons = CollapseRule().check(_eval(REPEATED), teacher)
    assert any("distinct-2" in r for r in reasons) and any("repeat" in r for r in reasons)
    assert CollapseRule().check(_eval(VARIED), teacher) == []


def test_collapse_rule_is_relative_to_a_repetitive_teacher():
    """A teacher that repeats itself sets the bar: a student as repetitive is not flagged."""
    assert CollapseRule().check(_eval(REPEATED), _eval(REPEATED)) == []


def _answers(distinct_2: float, repeats: float) -> dict[str, float]:
    return {
        f"eval/{kind}_{k}": v
        for kind in ("greedy", "sample")
        for k, v in (("distinct_2", distinct_2), ("repeated_3gram_rate", repeats))
    }


@pytest.mark.parametrize("greedy_repeats,warned", [(0.32, True), (0.21, False)])
def test_collapse_rule_flags_a_looping_tail(greedy_repeats, warned):
    """The default job's student at 70 steps (greedy answers on topic, half of them ending in
    a loop: 32% of 3-grams repeat, the teacher's 9%) is called out; at 140 steps (21%) not."""
    after = _answers(0.70, 0.002) | {"eval/greedy_repeated_3gram_rate": greedy_repeats}
    teacher = _answers(0.87, 0.009) | {"eval/greedy_repeated_3gram_rate": 0.09}
    reasons = CollapseRule().check(after, teacher)
    assert reasons == (
        [f"{greedy_repeats:.0%} of the 3-grams of its greedy answers repeat (the teacher's: 9%)"]
        if warned
        else []
    )


@pytest.mark.parametrize("chrf_after,warned", [(11.1, True), (25.2, False)])
def test_summary_warns_when_answers_move_away_from_the_teacher(tmp_path, chrf_after, warned):
    """Lower KLs with answers further from the teacher's (the old minillm run): a warning,
    although the collapse rule itself (varied, unrepeated answers) is satisfied."""
    from trainer.report import summary

    before = {"eval/rkl_student_samples": 7.93, **_answers(0.94, 0.02), "eval/greedy_chrf": 18.6}
    after = {
        "eval/rkl_student_samples": 1.98,
        **_answers(0.80, 0.10),
        "eval/greedy_chrf": chrf_after,
    }
    teacher = _answers(0.87, 0.09)
    text = summary({"before": before, "after": after, "teacher": teacher}, tmp_path, 1.0)
    assert "looks collapsed" not in text
    assert ("further from the teacher's than before training (chrF 18.6 -> 11.1)" in text) is warned


def test_collapse_rule_flags_empty_answers():
    """Whitespace has no repeated n-grams and counts as varied; the empty share catches it."""
    blank = ["   \n\n  ", "\t", "", "The moon orbits the Earth."]
    assert text_metrics(blank, [8] * 4, [False] * 4)["empty_share"] == pytest.approx(0.75)
    reasons = CollapseRule().check(_eval(blank), _eval(VARIED))
    assert any("75% of its greedy answers are empty" in r for r in reasons)
    assert CollapseRule().check(_eval(VARIED), _eval(VARIED)) == []
