"""Every recipe composes through Hydra and runs a short smoke run on the tiny models."""

import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize
from omegaconf import OmegaConf

import ondistill.main  # noqa: F401  (registers the schema and the recipes)
from trainer.run import run

RECIPES = sorted(
    p.parent.name for p in (Path(__file__).parents[1] / "recipes").glob("*/config.yaml")
)


def test_all_recipes_found():
    assert {"gkd", "minillm", "on_policy_rkl", "seqkd"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_smoke_run(ray_local, tiny_dirs, tiny_gemma_teacher, prompts_file, tmp_path, recipe):
    teacher, student = tiny_dirs
    if recipe == "cross_tokenizer":  # a teacher with Gemma's own tokenizer, as the recipe's
        teacher = tiny_gemma_teacher
    teachers = [f"model.teacher={teacher}", "teacher.threads=1"]
    if recipe == "multi_teacher":  # the recipe's two teachers, each row naming its own
        teachers = [
            f"teachers.0.model={teacher}",
            f"teachers.1.model={tiny_gemma_teacher}",
            "teachers.0.engine.threads=1",
            "teachers.1.engine.threads=1",
        ]
        rows = [json.loads(x) for x in prompts_file.read_text().splitlines()]
        prompts_file = tmp_path / "routed.jsonl"
        prompts_file.write_text(
            "".join(
                json.dumps({**r, "teacher": ("smol", "gemma")[i % 2]}) + "\n"
                for i, r in enumerate(rows)
            )
        )
    with initialize(version_base="1.3", config_path=None):
        dcfg = compose(
            "main",
            overrides=[
                f"recipe={recipe}",
                *teachers,
                f"model.student={student}",
                "model.student_keep_layers=[]",
                f"model.cache_dir={tmp_path}",
                f"data.prompts={prompts_file}",
                "data.eval_size=4",
                "rollout.backend=hf",
                "rollout.max_new_tokens=8",
                "rollout.threads=1",
                "student.threads=1",
                "trainer.steps=3",
                "trainer.prompts_per_step=2",
                "trainer.save_student=false",
                "log.wandb=disabled",
                "log.progress=false",
            ],
        )
    cfg = OmegaConf.to_object(dcfg)
    results = run(cfg, tmp_path / "out")
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert len(train) == 3 and all(math.isfinite(r["loss"]) and r["kl"] >= 0 for r in train)
    assert set(results) == {"before", "after", "teacher"}
    if recipe == "cross_tokenizer":  # the cross-tokenizer path really ran
        assert all(0 < r["aligned_fraction"] <= 1 for r in train)
        assert "eval/xt_exact_fkl_teacher_samples" in results["after"]
    if recipe == "multi_teacher":  # both teachers trained and were evaluated, each on its rows
        per_teacher = [(k, v) for r in train for k, v in r.items() if k.startswith("kl/")]
        assert {k for k, _ in per_teacher} == {"kl/smol", "kl/gemma"}  # only where it has rows
        assert all(v > 0 for _, v in per_teacher)
        assert all(0 < r.get("aligned_fraction/gemma", 1) <= 1 for r in train)
        assert "eval/fkl_teacher_samples/smol" in results["after"]
        assert "eval/xt_exact_fkl_teacher_samples/gemma" in results["after"]
        samples = (tmp_path / "out" / "samples.jsonl").read_text().splitlines()
        assert {json.loads(x)["teacher"] for x in samples} == {"smol", "gemma"}
