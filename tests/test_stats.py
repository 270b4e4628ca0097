"""The identity bootstrap against closed forms, and paired comparisons from per-query records."""
import numpy as np
import pytest

from jlml_plugin.tools.stats import (Interval, bootstrap_mean, model_interval, paired_interval,
                               query_scores, verdict)


def test_two_identities_give_the_exact_bootstrap_distribution():
    # Means of 2 draws from {0, 1}: 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4.
    result = bootstrap_mean([(np.array([7, 9]), np.array([0.0, 1.0]))])
    assert result == Interval(0.5, 0.0, 1.0)


def test_interval_matches_the_closed_form_standard_error():
    rng = np.random.default_rng(1)
    n = 400
    identity_means = rng.normal(0.3, 1.0, n)
    values = np.repeat(identity_means, 2)  # two queries per identity, alike
    result = bootstrap_mean([(np.repeat(np.arange(n), 2), values)], seed=3)
    # Resampling n identities: the mean's standard error is the population sd over sqrt(n).
    se = identity_means.std() / np.sqrt(n)
    assert result.mean == pytest.approx(identity_means.mean())
    assert (result.high - result.low) / 2 == pytest.approx(1.96 * se, rel=0.06)
    assert (result.low + result.high) / 2 == pytest.approx(result.mean, abs=0.15 * se)


def test_splits_pool_their_identities_with_the_closed_form_variance():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.0, 1.0, 300), rng.normal(1.0, 3.0, 100)
    result = bootstrap_mean([(np.arange(300), a), (300 + np.arange(100), b)], seed=4)
    # One query per identity, 400 identities drawn from both splits at once: the pooled
    # mean's standard error is the pooled population sd over sqrt(400).
    pooled = np.concatenate([a, b])
    assert result.mean == pytest.approx(pooled.mean())
    assert (result.high - result.low) / 2 == pytest.approx(1.96 * pooled.std() / 20, rel=0.06)


def test_an_identity_tested_in_two_splits_is_one_unit():
    """CUHK01's partitions overlap: a person tested in two splits, with the same outcome,
    adds no more information than one split; the interval is exactly the one split's."""
    values = np.random.default_rng(8).random(60)
    one = bootstrap_mean([(np.arange(60), values)], seed=9)
    two = bootstrap_mean([(np.arange(60), values), (np.arange(60), values)], seed=9)
    assert one == two


def test_identities_are_resampled_not_queries():
    """Querying each person twice adds no information when both queries agree: the
    interval is exactly that of one query per person (resampling queries would narrow it
    by a factor of sqrt 2)."""
    values = np.random.default_rng(5).random(50)
    once = bootstrap_mean([(np.arange(50), values)], seed=6)
    twice = bootstrap_mean([(np.repeat(np.arange(50), 2), np.repeat(values, 2))], seed=6)
    assert once == twice


@pytest.mark.parametrize('interval,expected', [
    (Interval(1.0, 0.1, 2.0), 'holds'), (Interval(-1.0, -2.0, -0.1), 'fails'),
    (Interval(0.5, -0.1, 1.0), 'not shown'), (Interval(0.0, 0.0, 0.0), 'not shown')])
def test_verdicts(interval, expected):
    assert verdict(interval) == expected


def _record(label, split, first_rank, ap, seed=1, pids=None):
    n = len(first_rank)
    return dict(label=label, split_id=split, seed=seed, index=list(range(n)),
                pid=list(pids if pids is not None else np.arange(n) // 2),
                first_rank=list(first_rank), ap=list(ap))


def test_paired_differences_are_query_by_query():
    rng = np.random.default_rng(7)
    ranks = rng.integers(1, 20, 200)
    ap = rng.random(200)
    queries = [_record('a', 0, ranks, ap), _record('b', 0, ranks, ap - 0.05),
               _record('a', 2, ranks[:100], ap[:100]), _record('b', 2, ranks[:100], ap[:100] - 0.05)]
    # b trails a by exactly 0.05 AP on every query: no uncertainty in the difference,
    # however much the queries' APs vary.
    diff = paired_interval(queries, 'a', 'b', 'mAP')
    assert diff.mean == pytest.approx(0.05) and diff.low == pytest.approx(0.05)
    assert diff.high == pytest.approx(0.05)
    assert paired_interval(queries, 'a', 'b', 'rank1') == Interval(0.0, 0.0, 0.0)
    alone = model_interval(queries, 'a', 'mAP')
    assert alone.mean == pytest.approx(np.concatenate([ap, ap[:100]]).mean())
    assert alone.low < alone.mean < alone.high
    assert paired_interval(queries, 'a', 'c', 'mAP') is None


def test_seeds_are_averaged_query_by_query():
    one = _record('a', 0, [1, 3, 1, 2], [1.0, 0.2, 1.0, 0.5])
    two = _record('a', 0, [2, 1, 1, 1], [0.5, 1.0, 1.0, 1.0], seed=2)
    index, pid, r1 = query_scores([one, two], 'rank1')
    np.testing.assert_array_equal(r1, [0.5, 0.5, 1.0, 0.5])
    np.testing.assert_array_equal(pid, [0, 0, 1, 1])
    with pytest.raises(ValueError, match='same queries'):
        query_scores([one, _record('a', 0, [1, 1, 1], [1.0, 1.0, 1.0])], 'rank1')
