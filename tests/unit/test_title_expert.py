"""The title expert (``training.title_expert``) on real fashion titles: what the checkpoint stores
rebuilds the same model (decision values equal to scikit-learn's own pipeline), and the weight
chosen on validation is what helps there (on when the deep scores know nothing, off when the
titles are noise)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch


@pytest.fixture(scope="module")
def listings(fashion_dir) -> pd.DataFrame:
    """About 1,500 real listings of the 12 most frequent leaf categories."""
    frame = pd.read_csv(fashion_dir / "styles.csv", on_bad_lines="skip", dtype=str).dropna(
        subset=["productDisplayName", "articleType"])
    frame["path"] = frame["masterCategory"] + " > " + frame["subCategory"] + " > " + frame["articleType"]
    top = frame["path"].value_counts().index[:12]
    frame = frame[frame["path"].isin(top)].groupby("path").head(125).sample(frac=1.0, random_state=0)
    return frame.rename(columns={"productDisplayName": "title"}).reset_index(drop=True)


def _split(listings):
    cut = int(len(listings) * 0.7)
    train, val = listings.iloc[:cut], listings.iloc[cut:]
    labels = sorted(train["path"].unique())
    index = {c: i for i, c in enumerate(labels)}
    targets = np.array([index.get(p, -1) for p in val["path"]])
    return train, val, labels, targets


def test_the_stored_expert_rebuilds_scikit_learns_own_model(listings):
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    from training.evaluate import title_features
    from training.title_expert import TitleExpert, fit_title_expert

    train, val, labels, targets = _split(listings)
    uninformed = np.full((len(val), len(labels)), -np.log(len(labels)))
    expert, report = fit_title_expert(train["title"], train["path"], labels, val["title"].tolist(),
                                      uninformed, targets)
    assert report["terms"] > 1000 and report["weight"] > 0  # uninformed heads: the expert helps
    assert report["val_accuracy"] > report["val_accuracy_deep"] + 0.5

    buffer = io.BytesIO()
    torch.save({"title_expert": expert.to_entry()}, buffer)
    buffer.seek(0)
    entry = torch.load(buffer, weights_only=True)["title_expert"]  # no pickle needed
    rebuilt = TitleExpert.from_entry(entry)

    # scikit-learn's own pipeline: features on every training title, the SVM on each distinct
    # (title, path) pair once, weighted by its count (what the expert is fitted on)
    reference = make_pipeline(title_features(), LinearSVC(C=1.0, random_state=0))
    reference[0].fit(train["title"])
    pairs = train.groupby(["title", "path"], sort=False).size().reset_index(name="n")
    reference[1].fit(reference[0].transform(pairs["title"]), pairs["path"], sample_weight=pairs["n"])
    titles = val["title"].tolist() + ["", "Nike Men Navy Blue Shirt ✓ 日本", None]
    ours = rebuilt.decision(titles)
    theirs = reference.decision_function([t or "" for t in titles])
    order = [list(reference.classes_).index(c) for c in labels]
    np.testing.assert_allclose(ours, theirs[:, order], rtol=1e-5, atol=1e-5)
    assert (ours.argmax(1)[:len(val)] == targets).mean() > 0.8
    lp = rebuilt.log_probs(titles)
    np.testing.assert_allclose(np.exp(lp / rebuilt.weight).sum(1), 1.0, rtol=1e-4)


def test_noise_titles_and_confident_heads_leave_the_expert_off(listings):
    from training.title_expert import fit_title_expert

    train, val, labels, targets = _split(listings)
    noisy = train.assign(title=train["title"].sample(frac=1.0, random_state=1).to_numpy())  # titles shuffled
    confident = np.full((len(val), len(labels)), -30.0)
    confident[np.arange(len(val)), np.clip(targets, 0, None)] = 0.0
    expert, report = fit_title_expert(noisy["title"], noisy["path"], labels, val["title"].tolist(),
                                      confident, targets)
    assert expert is not None and report["weight"] == 0.0 and "off" in report["reason"]
    assert not expert.log_probs(["anything"]).any()


def test_a_leaf_the_titles_never_show_is_never_the_experts_pick_and_two_classes_work(listings):
    from training.title_expert import fit_title_expert

    train, val, labels, targets = _split(listings)
    two = sorted(train["path"].unique())[:2]
    train2, val2 = train[train["path"].isin(two)], val[val["path"].isin(two)]
    labels3 = [*two, "Zz > Never > Seen"]
    targets2 = np.array([labels3.index(p) for p in val2["path"]])
    expert, report = fit_title_expert(train2["title"], train2["path"], labels3, val2["title"].tolist(),
                                      np.zeros((len(val2), 3)), targets2)
    picks = expert.decision(val2["title"].tolist()).argmax(1)
    assert 2 not in picks and (picks == targets2).mean() > 0.9
    none, why = fit_title_expert(train2["title"], [two[0]] * len(train2), labels3, [], np.zeros((0, 3)),
                                 np.zeros(0, dtype=int))
    assert none is None and "two categories" in why["reason"]


def test_an_entry_whose_parts_do_not_fit_is_refused(listings):
    from training.title_expert import TitleExpert, fit_title_expert

    train, val, labels, targets = _split(listings)
    expert, _ = fit_title_expert(train["title"], train["path"], labels, val["title"].tolist(),
                                 np.zeros((len(val), len(labels))), targets)
    entry = expert.to_entry()
    with pytest.raises(ValueError, match="coefficients of shape"):
        TitleExpert.from_entry({**entry, "labels": labels[:-1]})
    with pytest.raises(ValueError, match="IDF values"):
        TitleExpert.from_entry({**entry, "word_idf": entry["word_idf"][:-1]})


def test_copies_of_a_title_weigh_like_copies_and_the_cap_keeps_every_leaf(listings):
    """Fitting each distinct (title, path) pair once with its count as weight gives the model that
    fitting the copies gives (the same optimum; liblinear converges much faster); above
    ``max_rows`` distinct pairs a leaf-stratified sample is fitted, every leaf kept."""
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    from training.evaluate import fit_title_svm, title_features, title_training_set

    train, val, _, _ = _split(listings)
    titles = train["title"].tolist() * 3 + train["title"].tolist()[:100]
    paths = train["path"].tolist() * 3 + train["path"].tolist()[:100]
    rows, pairs, weights = title_training_set(titles, paths, max_rows=0)
    distinct = len(set(zip(titles, paths, strict=True)))
    assert len(rows) == len(titles) and len(pairs) == distinct and weights.sum() == len(titles)
    assert weights.max() >= 4  # a pair of the first 100 rows: 3 copies + 1
    features, svm, report = fit_title_svm(titles, paths)
    assert report == {"rows": len(titles), "distinct_pairs": distinct, "fitted_pairs": distinct,
                      "capped": False}
    copies = make_pipeline(title_features(), LinearSVC(C=1.0, random_state=0, max_iter=20_000)).fit(titles, paths)
    ours = svm.decision_function(features.transform(val["title"]))
    theirs = copies.decision_function(val["title"])
    assert list(svm.classes_) == list(copies.classes_)
    assert np.mean(ours.argmax(1) == theirs.argmax(1)) > 0.99
    np.testing.assert_allclose(ours, theirs, atol=0.05)

    cap = 120
    rows, pairs, weights = title_training_set(titles, paths, max_rows=cap, min_per_leaf=5)
    kept = {paths[i] for i in pairs}
    assert kept == set(paths)  # every leaf keeps its floor
    assert cap - len(kept) <= len(pairs) <= cap + 5 * len(kept)  # quotas rounded per leaf
    assert weights.sum() == len(rows) < len(titles)  # features from the kept pairs' rows only
    assert {(titles[i], paths[i]) for i in rows} == {(titles[i], paths[i]) for i in pairs}
    again = title_training_set(titles, paths, max_rows=cap, min_per_leaf=5)
    np.testing.assert_array_equal(again[1], pairs)  # stable
    _, svm, report = fit_title_svm(titles, paths, max_rows=cap)
    assert report["capped"] and report["fitted_pairs"] == len(pairs)
    assert set(svm.classes_) == set(paths)
