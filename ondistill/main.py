"""Entry point: `python -m ondistill.main [recipe=NAME] [key=value ...]`.

With no arguments it distils the builtin SmolLM2-135M-Instruct teacher into a 6-layer
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
        cs.store(group="recipe", name=path.parent.name, node=OmegaConf.load(path),
                 package="_global_")
    cs.store(name="main", node={
        "defaults": ["ondistill", {"recipe": None}, "_self_"],
        "hydra": {"run": {"dir": "runs/${now:%Y-%m-%d_%H-%M-%S}"}, "job": {"chdir": False}},
    })


register()
register_recipes()


@hydra.main(version_base="1.3", config_path=None, config_name="main")
def main(dcfg: DictConfig) -> None:
    from ondistill.config import ConfigError
    from ondistill.data import DataError
    from trainer.run import run

    cfg: Config = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
    out_dir = Path(cfg.trainer.output_dir or HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, out_dir)
    except (ConfigError, DataError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
