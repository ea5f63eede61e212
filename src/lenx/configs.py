"""lenx's own config files (`configs/`), read by name: the one place that loads them outside Hydra.

A name is one of the files of its group (`configs/<group>/<name>.yaml`), never a path. Loading configs lives here,
below the modules that build models and score them and apart from the maths modules (lenx.extensions, lenx.pos),
which never import it: those stay importable on their own, and their imports point one way.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf

from lenx.errors import ConfigError, instantiate_node

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
NAME = re.compile(r"[A-Za-z0-9_]+")


def load_yaml(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def config_names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def named_config(group: str, name, what: str, hint: str = "") -> dict:
    """configs/<group>/<name>.yaml as a dict; `name` must be one of those files' names (never a path)."""
    known = config_names(group)
    if not isinstance(name, str) or not NAME.fullmatch(name) or name not in known:
        raise ConfigError(f"unknown {what} {name!r}; known: {known}{hint}")
    return load_yaml(CONFIG_DIR / group / f"{name}.yaml")


def scaling_config(name: str) -> dict:
    """configs/pos/scaling/<name>.yaml as a dict; `name` must be one of those files' names (never a path)."""
    return named_config("pos/scaling", name, "scaling", " (and 'interpolate' for pos=learned)")


def scheme_config(name: str) -> dict:
    """configs/pos/<name>.yaml composed with its default scaling, as a plain dict."""
    cfg = load_yaml(CONFIG_DIR / "pos" / f"{name}.yaml")
    for entry in cfg.pop("defaults", []):
        if isinstance(entry, dict) and "scaling" in entry:
            cfg["scaling"] = scaling_config(entry["scaling"])
    return cfg


def scheme_configs() -> dict[str, dict]:
    """Every configs/pos/<name>.yaml, composed, by name."""
    return {n: scheme_config(n) for n in config_names("pos")}


def build_extension(entry: str | dict, train_len: int):
    """(label, lenx.extensions.Extension) for an `extensions=[...]` entry: a name from configs/extension/ (never a
    path), or a mapping {name: ..., <parameter>: value, ...} overriding that file's parameters (a key it does not
    have is refused), labelled name[key=value,...] in the rows."""
    over = dict(entry) if isinstance(entry, dict) else {}
    name = over.pop("name", None) if isinstance(entry, dict) else entry
    cfg = named_config("extension", name, "extension", " (a mapping entry names it with `name:`)")
    unknown = sorted(set(over) - set(cfg) - {"_target_"})
    if unknown or "_target_" in over:
        raise ConfigError(f"extension {name} takes {sorted(set(cfg) - {'_target_'}) or 'no parameters'}; "
                          f"unknown: {unknown or ['_target_']}")
    ext = instantiate_node({**cfg, **over}, f"extension {name}").resolve(train_len)
    label = name if not over else f"{name}[{','.join(f'{k}={v}' for k, v in sorted(over.items()))}]"
    return label, ext
