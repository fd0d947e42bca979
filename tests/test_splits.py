import numpy as np
import pytest

from breastai.data.splits import carve_validation, fixed_split, group_kfold


def _records(n=120, seed=0):
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        g = f"g{i // 3}"  # groups of three
        recs.append({"case_id": f"c{i}", "label": "malignant" if (i // 3) % 3 == 0 else "benign", "group": g,
                     "split": "", "fold": None})
    rng.shuffle(recs)
    return recs


@pytest.mark.parametrize("k", [3, 5])
def test_folds_never_share_a_group_and_cover_all(k):
    recs = _records()
    folds = group_kfold(recs, k, seed=1)
    assert len(folds) == k
    allidx = np.concatenate(folds)
    assert sorted(allidx.tolist()) == list(range(len(recs)))
    groups = [{recs[i]["group"] for i in f} for f in folds]
    for a in range(k):
        for b in range(a + 1, k):
            assert not groups[a] & groups[b]
    # stratified: each fold's malignant share is near the overall third
    for f in folds:
        share = np.mean([recs[i]["label"] == "malignant" for i in f])
        assert abs(share - 1 / 3) < 0.12


def test_validation_carved_group_aware():
    recs = _records()
    tr, va = carve_validation(recs, np.arange(len(recs)), 0.2, seed=0)
    assert len(va) == pytest.approx(24, abs=6)
    assert not {recs[i]["group"] for i in tr} & {recs[i]["group"] for i in va}


def test_fixed_fold_column_is_used():
    recs = _records(12)
    for i, r in enumerate(recs):
        r["fold"] = i % 2
    folds = group_kfold(recs, 5)
    assert len(folds) == 2


def test_fixed_split_rejects_group_across_splits():
    recs = _records(12)
    recs[0]["split"] = "test"
    same = [r for r in recs[1:] if r["group"] == recs[0]["group"]][0]
    same["split"] = "train"
    with pytest.raises(ValueError, match="more than one split"):
        fixed_split(recs, 0.2)


def test_split_seed_keeps_the_folds_while_the_training_seed_varies():
    import copy

    from breastai.core.config import DEFAULTS
    from breastai.engine.cv import cv_splits

    def cfg(seed, split_seed=None):
        c = copy.deepcopy(DEFAULTS)
        c["seed"], c["data"]["split_seed"] = seed, split_seed
        return c

    def as_lists(splits):
        return [[part.tolist() for part in fold] for fold in splits]

    recs = _records()
    base = as_lists(cv_splits(recs, 3, cfg(0)))
    assert as_lists(cv_splits(recs, 3, cfg(1, split_seed=0))) == base
    assert as_lists(cv_splits(recs, 3, cfg(1))) != base  # without it, the seed moves folds and validation parts
    older = cfg(1)
    del older["data"]["split_seed"]  # a config saved before the key existed
    assert as_lists(cv_splits(recs, 3, older)) == as_lists(cv_splits(recs, 3, cfg(1)))
