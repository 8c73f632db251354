"""YAML configs: unknown keys are errors; dotted overrides."""

import pytest

from demix.config import ConfigError, load_yaml, to_dict
from demix.models import BandSplitConfig
from demix.train import TrainConfig


def test_load_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sources:\n  - {name: cdx.film_mix, head: film}\nbatch_size: 2\n")
    cfg = load_yaml(TrainConfig, path, ["batch_size=8", "model_config.dim=32", "lr=3e-4"])
    assert cfg.batch_size == 8 and cfg.lr == pytest.approx(3e-4)
    assert cfg.model_config == {"dim": 32}
    assert cfg.sources[0].head == "film"
    assert to_dict(cfg)["sources"][0]["name"] == "cdx.film_mix"


def test_an_override_reaches_into_a_list_by_index(tmp_path):
    """``--set sources.0.config.root=...`` said "sources is not a section": a whole new
    sources list was the only way to point a recipe at another dataset folder."""
    path = tmp_path / "c.yaml"
    path.write_text("sources:\n  - {name: cdx.dnr, head: film, config: {root: /a}}\n")
    cfg = load_yaml(TrainConfig, path, ["sources.0.config.root=/data/dnr", "sources.0.weight=2"])
    assert cfg.sources[0].config == {"root": "/data/dnr"} and cfg.sources[0].weight == 2
    with pytest.raises(ConfigError, match=r"sources is a list of 1; '1' is not one of its"):
        load_yaml(TrainConfig, path, ["sources.1.config.root=/x"])
    with pytest.raises(ConfigError, match=r"sources\.0\.head is not a section"):
        load_yaml(TrainConfig, path, ["sources.0.head.x=2"])


def test_unknown_keys_are_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sources: []\nbatchsize: 2\n")
    with pytest.raises(ConfigError, match="batchsize"):
        load_yaml(TrainConfig, path)
    path.write_text("sources:\n  - {name: x, head: film, colour: red}\n")
    with pytest.raises(ConfigError, match="colour"):
        load_yaml(TrainConfig, path)


def test_type_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dim: many\n")
    with pytest.raises(ConfigError, match="dim"):
        load_yaml(BandSplitConfig, path)


def test_every_shipped_config_parses():
    from pathlib import Path

    from demix.train import TrainConfig

    configs = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))
    assert len(configs) >= 2
    for path in configs:
        cfg = load_yaml(TrainConfig, path)
        assert cfg.sources and cfg.run_dir, path
