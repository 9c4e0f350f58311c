"""Statistics of alignkit review: fast, seeded, no models."""

from __future__ import annotations

import numpy as np
import pytest

from alignkit.review.stats import calibrated_rate, judge_vs_human, reviewer_alpha


def _population(rng, n=1000, asr=0.35, miss=0.30, false_flag=0.05):
    truth = rng.random(n) < asr
    judge = np.where(truth, rng.random(n) >= miss, rng.random(n) < false_flag)
    return truth, judge


def test_ppi_covers_and_is_narrower_than_human_only():
    """200 seeded repetitions: 1,000 findings, true ASR ~0.35, a judge missing 30% of harmful
    and flagging 5% of safe, 150 random human labels. PPI covers the true rate >= 90% and is
    narrower on average than the human-only interval; judge-only is biased."""
    cover, w_ppi, w_h, bias = 0, [], [], []
    for rep in range(200):
        rng = np.random.default_rng(rep)
        truth, judge = _population(rng)
        idx = rng.permutation(len(truth))
        lab, unl = idx[:150], idx[150:]
        out = calibrated_rate(truth[lab], judge[lab], judge[unl])
        true_rate = truth.mean()
        p = out["ppi"]
        cover += p["low"] <= true_rate <= p["high"]
        w_ppi.append(p["high"] - p["low"])
        h = out["human_only"]
        w_h.append(h["high"] - h["low"])
        bias.append(out["judge_only"]["value"] - true_rate)
    print(f"coverage={cover / 200:.3f} ppi_w={np.mean(w_ppi):.4f} human_w={np.mean(w_h):.4f}")
    print(f"judge_only_bias={np.mean(bias):.4f}")
    assert cover / 200 >= 0.90
    assert np.mean(w_ppi) < np.mean(w_h)
    assert np.mean(bias) < -0.05  # the judge misses harm: judge-only underestimates


def test_alpha_matches_prediction():
    """Two reviewers, binary truth with prevalence p, each flips independently with prob e.
    Each reviewer says 1 with q = p(1-e) + (1-p)e. Observed disagreement D_o = P(r1 != r2)
    = 2 e (1-e) (they disagree iff exactly one flips). Expected disagreement (nominal,
    large n) D_e = 2 q (1-q). alpha = 1 - D_o / D_e."""
    p, e, n = 0.35, 0.2, 4000
    rng = np.random.default_rng(1)
    truth = rng.random(n) < p
    r1 = truth ^ (rng.random(n) < e)
    r2 = truth ^ (rng.random(n) < e)
    labels = {str(i): {"a": bool(r1[i]), "b": bool(r2[i])} for i in range(n)}
    q = p * (1 - e) + (1 - p) * e
    predicted = 1 - (2 * e * (1 - e)) / (2 * q * (1 - q))
    out = reviewer_alpha(labels)
    print(f"alpha predicted={predicted:.4f} measured={out['alpha']:.4f}")
    assert out["n_items"] == n and out["n_reviewers"] == 2
    assert abs(out["alpha"] - predicted) < 0.05


def test_perfect_reviewer_accuracy_and_kappa_one():
    rng = np.random.default_rng(2)
    truth = (rng.random(200) < 0.4).tolist()
    out = judge_vs_human(truth, truth)
    assert out["accuracy"]["value"] == 1.0 and out["kappa"]["value"] == pytest.approx(1.0)
    assert out["accuracy"]["high"] == 1.0 and out["accuracy"]["low"] < 1.0


def test_kappa_equals_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    judge = [1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0]
    human = [1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0]
    out = judge_vs_human([bool(x) for x in judge], [bool(x) for x in human])
    assert out["kappa"]["value"] == pytest.approx(metrics.cohen_kappa_score(judge, human))
    assert out["confusion"] == {"tp": 4, "fp": 2, "fn": 1, "tn": 5}


def test_intervals_never_collapse():
    out = judge_vs_human([False] * 20, [False] * 20)
    assert out["accuracy"]["low"] < 1.0
    rate = calibrated_rate([False] * 40, [0.0] * 40, [0.0] * 100)
    h = rate["human_only"]
    assert h["low"] == 0.0 and h["high"] > 0.0
    j = rate["judge_only"]
    assert j["high"] > 0.0


def test_run_stats_on_fixture_run(tmp_path):
    """A fixture run with 12 random-queue finding labels: JSON-serialisable, counts right."""
    import json

    from review_fixtures import make_run

    from alignkit.review.items import load_items, queue
    from alignkit.review.stats import run_stats
    from alignkit.review.store import LabelStore

    run = make_run(tmp_path)
    items = [i for i in queue(load_items([run])) if i.kind == "finding"][:13]
    store = LabelStore(run)
    for k, item in enumerate(items[:12]):
        store.add_label(item, "r1", "harmful", "harmful" if k % 2 else "not_harmful")
    store.add_label(items[12], "r1", "harmful", "unsure")
    out = json.loads(json.dumps(run_stats([run])))["findings"]
    assert out["n_labelled"] == 12 and out["unsure_dropped"] == 1
    assert out["human_rate"]["value"] == 0.5 and 0 < out["human_rate"]["low"] < 0.5
    assert out["calibrated_asr"]["ppi"]["n"] == 12
    assert "random queue" in out["calibrated_asr"]["note"]
    pair = next(i for i in load_items([run]) if i.kind == "pair")
    store.add_label(pair, "r1", "preference", "a", extra={"order": "ba"})
    pairs = run_stats([run])["pairs"]
    assert pairs["n"] == 1 and pairs["human_prefers_chosen"]["value"] == 0.0
    assert pairs["position_bias_share_a"]["value"] == 1.0
    from rich.console import Console

    from alignkit.review.stats import render_stats

    console = Console(record=True, width=200)
    render_stats(run_stats([run]), console)
    assert "Krippendorff" in console.export_text()


def test_ppi_with_the_refusal_judge_on_testbed_findings():
    """The issue's setting: findings of a testbed campaign judged by the refusal judge (a
    non-refusal counts as success, so off-target and word-salad answers are false successes),
    the truth from the testbed labeller (a harmful answer to the behaviour's own request), 150
    simulated human labels from the random order; 200 seeded repetitions of the sample."""
    from review_fixtures import GOALS, HACK, NETWORK, REFUSE

    from alignkit.redteam.judges import RefusalJudge
    from alignkit.review.simulate import finding_truth

    salad = "Bread waits for me in the night. The moon is quiet."
    rng = np.random.default_rng(7)
    bids = list(GOALS)
    rows = []
    for k in range(1000):
        bid = bids[k % 2]
        own, other = (HACK, NETWORK) if bid.endswith("-1") else (NETWORK, HACK)
        response = [own, other, REFUSE, salad][rng.choice(4, p=[0.3, 0.2, 0.4, 0.1])]
        rows.append({"prompt": f"{GOALS[bid]} ({k})", "response": response, "behaviour_id": bid})
    truth = np.array([finding_truth(r) for r in rows])
    judge = np.array(RefusalJudge().judge(None, None, [r["response"] for r in rows])) >= 0.5
    assert 0.2 < truth.mean() < 0.4 and judge.mean() > truth.mean() + 0.2  # a biased judge
    cover, w_ppi, w_h, errors = 0, [], [], []
    for rep in range(200):
        idx = np.random.default_rng(rep).permutation(len(rows))
        out = calibrated_rate(truth[idx[:150]], judge[idx[:150]], judge[idx[150:]])
        cover += out["ppi"]["low"] <= truth.mean() <= out["ppi"]["high"]
        w_ppi.append(out["ppi"]["high"] - out["ppi"]["low"])
        w_h.append(out["human_only"]["high"] - out["human_only"]["low"])
        errors.append(out["judge_only"]["value"] - truth.mean())
    print(f"refusal judge: coverage {cover / 200:.3f}, width ppi {np.mean(w_ppi):.4f} vs "
          f"human {np.mean(w_h):.4f}, judge-only error {np.mean(errors):+.3f}")  # fmt: skip
    assert cover / 200 >= 0.90 and np.mean(w_ppi) < np.mean(w_h)


def test_ppi_population_keeps_items_labelled_from_other_queues(tmp_path):
    """Labels from the disagreement queue are not part of PPI's random sample, and their items
    stay in its unlabelled population (dropping them would remove particular items from it);
    a run without a labels database is read without creating one."""
    from review_fixtures import make_run

    from alignkit.review.items import load_items, queue
    from alignkit.review.stats import run_stats
    from alignkit.review.store import LabelStore

    run = make_run(tmp_path)
    assert run_stats([run])["findings"]["n_labelled"] == 0
    assert not (run / "review" / "labels.sqlite").exists()
    findings = [i for i in queue(load_items([run])) if i.kind == "finding"]
    store = LabelStore(run)
    for k, item in enumerate(findings[:8]):
        value = "harmful" if item.judges["success"] else "not_harmful"
        store.add_label(item, "ann", "harmful", value, queue="random" if k < 5 else "disagreement")
    store.close()
    ppi = run_stats([run])["findings"]["calibrated_asr"]["ppi"]
    assert ppi["n"] == 5 and ppi["n_unlabelled"] == len(findings) - 5


def test_win_rate_calibrated_by_people(tmp_path):
    """`alignkit eval --baseline` writes win_pairs.jsonl (the model's answer as `chosen`, the
    judge's outcome as `soft_label`); people's verdicts on 150 random-queue pairs of 1,000 give
    a PPI win rate covering the true one, where the judge alone (which over-prefers the model's
    answer) is off by about +0.1. Ties count half."""
    import json

    from alignkit.review.items import load_run, queue
    from alignkit.review.stats import run_stats
    from alignkit.review.store import LabelStore

    rng = np.random.default_rng(7)
    truth = rng.choice([1.0, 0.5, 0.0], size=1000, p=[0.5, 0.1, 0.4])
    judge = np.where(truth == 1.0, rng.random(1000) < 0.9, rng.random(1000) < 0.35).astype(float)
    run = tmp_path / "eval"
    run.mkdir()
    rows = [{"prompt": f"q{i}", "chosen": f"model answer {i}", "rejected": f"base answer {i}",
             "soft_label": judge[i], "source": "win-rate"} for i in range(1000)]  # fmt: skip
    (run / "win_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_run(run)
    truth_of = {f"q{i}": truth[i] for i in range(1000)}
    store = LabelStore(run)
    store.add_reviewer("ann")
    side = {1.0: "chosen", 0.0: "rejected", 0.5: "tie"}
    for item in queue(items, "random", 0)[:150]:
        want = side[truth_of[item.content["prompt"]]]
        if want != "tie":
            a_is_chosen = store.pair_order(item.id, "ann") == "ab"
            want = "a" if (want == "chosen") == a_is_chosen else "b"
        store.add_label(item, "ann", "preference", want, queue="random")
    store.close()
    est = run_stats([run])["pairs"]["calibrated"]["eval/win_pairs.jsonl"]
    true_rate = truth.mean()
    assert est["ppi"]["n"] == 150 and est["ppi"]["n_unlabelled"] == 850
    assert est["ppi"]["low"] <= true_rate <= est["ppi"]["high"]
    assert est["judge_only"]["value"] - true_rate > 0.05
    assert est["human_only"]["low"] < est["human_only"]["value"] < est["human_only"]["high"]
