"""Entry point: `python -m ondistill.main [recipe=NAME] [key=value ...]`.

With no arguments it distils the builtin SmolLM2-135M-Instruct teacher into an 18-layer
student on the shipped prompts. `--cfg job` prints the resolved config.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ondistill.config import Config, register

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def register_recipes() -> None:
    """Each recipes/<name>/config.yaml becomes option <name> of the `recipe` group: overrides
    only, applied on top of the dataclass defaults."""
    cs = ConfigStore.instance()
    for path in sorted(RECIPES.glob("*/config.yaml")):
        cs.store(
            group="recipe", name=path.parent.name, node=OmegaConf.load(path), package="_global_"
        )
    cs.store(
        name="main",
        node={
            "defaults": ["ondistill", {"recipe": None}, "_self_"],
            "hydra": {"run": {"dir": "runs/${now:%Y-%m-%d_%H-%M-%S}"}, "job": {"chdir": False}},
        },
    )


register()
register_recipes()


@hydra.main(version_base="1.3", config_path=None, config_name="main")
def main(dcfg: DictConfig) -> None:
    from ondistill.config import ConfigError
    from ondistill.data import DataError
    from trainer.guard import DivergedError
    from trainer.run import run

    cfg: Config = OmegaConf.to_object(dcfg)
    hydra_dir = Path(HydraConfig.get().runtime.output_dir)
    out_dir = Path(cfg.trainer.output_dir) if cfg.trainer.output_dir else hydra_dir
    try:
        run(cfg, out_dir)
    except DivergedError as e:
        sys.exit(f"error: {e}")
    except (ConfigError, DataError) as e:
        _drop_if_unused(hydra_dir)
        sys.exit(f"error: {e}")
    if out_dir != hydra_dir:  # the run wrote to trainer.output_dir; Hydra's own is unused
        _drop_if_unused(hydra_dir)


def _drop_if_unused(hydra_dir: Path) -> None:
    """A run refused on bad input (or writing elsewhere) leaves no runs/<time>/ behind: remove
    Hydra's directory if it holds only what Hydra itself wrote there."""
    import shutil

    if hydra_dir.is_dir() and {p.name for p in hydra_dir.iterdir()} <= {".hydra", "main.log"}:
        shutil.rmtree(hydra_dir, ignore_errors=True)
        try:
            hydra_dir.parent.rmdir()  # runs/ too, if this was its only run
        except OSError:
            pass  # other runs live there


if __name__ == "__main__":
    main()
