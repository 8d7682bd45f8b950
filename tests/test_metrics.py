"""Metrics on hand-made cases, and LLaRA's title parser with its edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speeder_hf.metrics import (
    answer_metrics,
    bucket_indices,
    bucket_of,
    hit_ratio_at_k,
    llara_hr1,
    mcnemar_test,
    mrr,
    ndcg_at_k,
    parse_title_answer,
    ranking_metrics,
    target_ranks,
    valid_hit_ratio,
    valid_ratio,
)

RANKS = [0, 2, 5, 1]


def test_rank_metrics_by_hand():
    assert hit_ratio_at_k(RANKS, 1) == 0.25
    assert hit_ratio_at_k(RANKS, 3) == 0.75
    assert hit_ratio_at_k(RANKS, 6) == 1.0
    assert ndcg_at_k(RANKS, 3) == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(3)) / 4)
    assert ndcg_at_k(RANKS, 1) == 0.25
    assert mrr(RANKS) == pytest.approx((1 + 1 / 3 + 1 / 6 + 1 / 2) / 4)


def test_target_ranks_count_ties_against_the_target():
    scores = torch.tensor([[0.1, 0.9, 0.5], [1.0, 1.0, 1.0], [0.3, 0.2, 0.1]])
    assert target_ranks(scores, torch.tensor([2, 0, 0])).tolist() == [1, 2, 0]


def test_ranking_metrics_from_scores():
    scores = np.array([[3.0, 1.0, 2.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    metrics = ranking_metrics(scores, [0, 1], ks=(1, 3))  # ranks 0 and 2
    assert metrics == pytest.approx({"HR@1": 0.5, "NDCG@1": 0.5, "HR@3": 1.0, "NDCG@3": 0.75, "MRR": 2 / 3})


@pytest.mark.parametrize(
    ("scores", "target", "match"),
    [
        ([[1.0, float("nan")]], [0], "NaN"),
        ([[1.0, 2.0]], [2], "target_index must lie in 0..1"),
        ([1.0, 2.0], [0], "scores must be"),
    ],
)
def test_target_ranks_reject_bad_input(scores, target, match):
    with pytest.raises(ValueError, match=match):
        target_ranks(scores, target)


def test_answer_metrics_by_hand():
    valid = [True, True, False, True, False]
    correct = [True, False, False, True, True]  # a "correct" invalid answer never counts
    assert valid_ratio(valid) == 0.6
    assert valid_hit_ratio(valid, correct) == 0.4
    assert llara_hr1(valid, correct) == pytest.approx(2 / 3)
    metrics = answer_metrics(valid, correct)
    assert metrics["VHR@1"] == pytest.approx(metrics["HR@1"] * metrics["ValidRatio"])
    assert llara_hr1([False, False], [False, False]) == 0.0
    with pytest.raises(ValueError, match="No samples"):
        valid_ratio([])


TITLES = ["Soap", "Soap Gel", "Red  Lipstick", "Mascara"]


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        ("Mascara", 3),
        ("  the answer is MASCARA!\n", 3),  # case and surrounding text do not matter
        ("red lipstick", 2),  # whitespace runs collapse
        ("Red\tLipstick", 2),
        ("\n\nMascara\nSoap", 3),  # leading blank lines are stripped, only the first line counts
        ("Mascara\nRed Lipstick", 3),
        ("Mascara or Red Lipstick", None),  # two titles: invalid
        ("Soap Gel", None),  # LLaRA: "soap" is inside "soap gel", so two candidates match
        ("Shampoo", None),
        ("", None),
    ],
)
def test_parse_title_answer(generation, expected):
    assert parse_title_answer(generation, TITLES) == expected


def test_parse_title_answer_ignores_empty_titles_and_flags_duplicates():
    assert parse_title_answer("mascara", ["", "  ", "Mascara"]) == 2
    assert parse_title_answer("mascara", ["Mascara", "mascara"]) is None


def test_history_buckets():
    assert [bucket_of(n) for n in (1, 5, 6, 10, 11, 20, 21, 200)] == [
        "1-5",
        "1-5",
        "6-10",
        "6-10",
        "11-20",
        "11-20",
        ">20",
        ">20",
    ]
    with pytest.raises(ValueError, match=">= 1"):
        bucket_of(0)
    groups = bucket_indices([3, 25, 7, 1])
    assert list(groups) == ["1-5", "6-10", ">20"]
    assert groups["1-5"].tolist() == [0, 3] and groups[">20"].tolist() == [1]


def test_mcnemar_matches_the_exact_binomial_tail_and_counts_discordant_pairs():
    from math import comb

    first = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 0], bool)
    second = np.array([0, 0, 0, 0, 0, 1, 1, 0, 1, 0], bool)
    result = mcnemar_test(first, second)
    # 5 users only the first model hits, 1 only the second: p = 2 * P(Bin(6, 1/2) <= 1) = 2 * 7 / 64.
    assert (result["first_only"], result["second_only"], result["n"]) == (5, 1, 10)
    assert result["p_value"] == pytest.approx(2 * (comb(6, 0) + comb(6, 1)) / 64)
    assert result["difference"] == pytest.approx(0.4)
    assert mcnemar_test(first, first)["p_value"] == 1.0
    # Thousands of pairs: a 55/45 split of 4,000 discordant users is far beyond chance, and no underflow.
    many = mcnemar_test(
        np.r_[np.ones(2200, bool), np.zeros(1800, bool)], np.r_[np.zeros(2200, bool), np.ones(1800, bool)]
    )
    assert 0 < many["p_value"] < 1e-9
    with pytest.raises(ValueError, match="one shape"):
        mcnemar_test(first, second[:5])
