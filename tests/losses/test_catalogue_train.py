"""Every loss term of issues 14 and 25 runs a fast_dev_run in a task it serves, through conf/loss/."""

import pytest

from segtrain.run import train

RUNS = [
    ("multiclass", 3, ["loss=ce_lovasz"]),
    ("binary", 1, ["loss=bce_lovasz"]),
    ("multiclass", 3, ["loss=dice_topk"]),
    ("multiclass", 3, ["loss=dice_ohem", "loss.terms.ohem_ce.min_kept=50"]),
    ("binary", 1, ["loss=dice_cldice"]),
    ("multiclass", 3, ["loss=generalized_dice", "loss.terms.generalized_dice.weight_type=simple"]),
    ("multilabel", 3, ["loss=bce_mcc"]),
    ("binary", 1, ["loss/terms=[dice,topk_bce,ohem_bce]", "loss.terms.topk_bce.k=5"]),
    ("multiclass", 3, ["loss/terms=[ce,log_cosh_dice]", "loss.terms.log_cosh_dice.include_background=false"]),
    ("binary", 1, ["loss/terms=[bce,log_cosh_dice]"]),
    # issue 25: derived targets from the data pipeline (distance maps, skeletons), schedules, Combo's beta
    ("binary", 1, ["loss=dice_boundary"]),  # epoch 0: the boundary weight is 0, the term is skipped
    ("multiclass", 3, ["loss=dice_ce_skeleton_recall"]),
    ("multiclass", 3, ["loss/terms=[ce,hausdorff_dt,generalized_wasserstein_dice]", "loss.terms.ce.beta=0.7"]),
    ("multilabel", 3, ["loss/terms=[hausdorff_er,unified_focal,boundary]"]),
    ("binary", 1, ["loss=combo", "loss.terms.bce.beta=0.7"]),
    ("multilabel", 3, ["loss/terms=[lovasz,mcc,cldice,focal]", "loss.terms.focal.include_background=false",
                       "loss.terms.focal.class_weights=[1.0,2.0,0.5]", "loss.terms.lovasz.per_image=true"]),
]


@pytest.mark.parametrize("task, num_classes, overrides", RUNS, ids=lambda v: str(v))
def test_fast_dev_run_new_terms(task, num_classes, overrides, compose_cfg):
    cfg = compose_cfg(f"task={task}", f"num_classes={num_classes}", "debug=fast_dev_run", *overrides)
    value = train(cfg)
    assert 0.0 <= value <= 1.0


@pytest.mark.parametrize("term, task", [("topk_ce", "binary"), ("ohem_bce", "multiclass"), ("mcc", "multiclass")])
def test_term_that_cannot_serve_the_task_is_refused(term, task, compose_cfg):
    n = 1 if task == "binary" else 3
    cfg = compose_cfg(f"task={task}", f"num_classes={n}", "debug=fast_dev_run", f"loss/terms=[{term}]")
    with pytest.raises(ValueError, match="cannot serve task"):
        train(cfg)
