"""The top-level data/ folder: the committed generated world is exactly what the code generates, and the
README documents every dataset the package loads."""

from __future__ import annotations

from pathlib import Path

from agentr1_nb.config import DATASETS, Config
from agentr1_nb.data import HUB_DATASETS
from agentr1_nb.world import WORLD_FILES, world_files, world_from_config

DATA = Path(__file__).resolve().parent.parent / "data"


def test_committed_generated_world_matches_the_code():
    """Regenerate the default world and compare byte for byte; on a deliberate change, rewrite the files
    with `write_world(world_from_config(Config()), "data/generated", Config().eval_fraction)`."""
    cfg = Config()
    assert (cfg.world_seed, cfg.world_entities, cfg.world_questions, cfg.eval_fraction) == (
        0,
        60,
        400,
        0.25,
    ), "the Config defaults changed: update data/README.md and rewrite data/generated"
    expected = world_files(world_from_config(cfg), cfg.eval_fraction)
    assert sorted(p.name for p in (DATA / "generated").iterdir()) == sorted(WORLD_FILES)
    for name in WORLD_FILES:
        committed = (DATA / "generated" / name).read_text(encoding="utf-8")
        assert committed == expected[name], f"data/generated/{name} differs from what the code generates"


def test_readme_names_every_dataset_and_hub_id():
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    for name in DATASETS:
        assert f"`{name}`" in readme, name
    for hub_id, config, _ in HUB_DATASETS.values():
        assert f"`{hub_id}`" in readme and (config is None or f"`{config}`" in readme), hub_id
    for licence in ("CC BY-SA 4.0", "Apache-2.0", "CC BY 4.0"):
        assert licence in readme
    for field in ("data_path", "corpus_path", "data_dir", "AGENTR1_DATA"):
        assert field in readme
