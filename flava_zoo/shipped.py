"""Recipes and benchmark suites that ship with the package, addressable by name.

The checkout keeps them at its top level (``recipes/<family>/<name>.yaml``,
``benchmarks/suites/<name>.yaml``); a wheel carries copies inside the package, under
``flava_zoo/_shipped/recipes`` and ``flava_zoo/_shipped/suites``, put there by the build hook
in ``setup.py`` (see its docstring for why a hook and not a ``package_dir`` mapping). This
module finds them in either place: the package's own copy when it has one (an installed
wheel), else the source tree the package is imported from (a checkout, and ``pip install -e .``,
whose editable finder points at the checkout's ``flava_zoo/``). So no caller needs to know
where the package runs from.

A recipe's *name* is its file's stem (``shapes_image``) when no other family has a recipe
of that stem, and always ``<family>/<stem>`` (``pretrain/shapes_image``,
``probe/shapes_classification``). ``recipes/...`` prefixes and ``.yaml`` suffixes are
accepted too, so the paths the README prints work from any folder.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

import yaml

__all__ = [
    "FAMILIES",
    "Recipe",
    "ShippedNotFound",
    "find_recipe",
    "find_suite",
    "list_recipes",
    "list_suites",
    "recipe_exporting_to",
    "recipes_dir",
    "suites_dir",
]

FAMILIES = ("pretrain", "finetune", "probe", "zeroshot")
"""The recipe folders, in the order ``flava-zoo recipes`` lists them."""
_PACKAGE = Path(__file__).resolve().parent
_SHIPPED = _PACKAGE / "_shipped"
"""Where a built wheel keeps its copies (written by ``setup.py``'s build hook)."""
_SOURCE_TREE = _PACKAGE.parent
"""The checkout, when the package is imported from one."""


class ShippedNotFound(FileNotFoundError):
    """A recipe or suite name that matches no file and no shipped copy; says what exists."""


def _folder(shipped: str, in_checkout: str) -> Path:
    own = _SHIPPED / shipped
    if own.is_dir():
        return own
    checkout = _SOURCE_TREE / in_checkout
    if checkout.is_dir():
        return checkout
    raise ShippedNotFound(
        f"this flava-zoo installation has no {shipped} (looked in {own} and {checkout}); "
        "reinstall the package from a wheel or a checkout"
    )


def recipes_dir() -> Path:
    """The folder of the shipped recipes (``<family>/<name>.yaml``)."""
    return _folder("recipes", "recipes")


def suites_dir() -> Path:
    """The folder of the shipped benchmark suites (``<name>.yaml``)."""
    return _folder("suites", "benchmarks/suites")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A shipped recipe: its name, file, family (the folder: ``pretrain``, ``finetune``,
    ``probe``, ``zeroshot``), what it trains or evaluates (the pretraining stage or the
    task), the first sentence of its leading comment, and where it exports (pretraining)."""

    name: str
    path: Path
    family: str
    kind: str
    description: str
    export_dir: str | None = None
    root_dir: str | None = None

    @property
    def qualified(self) -> str:
        """``<family>/<stem>``: a name that is never ambiguous."""
        return f"{self.family}/{self.path.stem}"


def _description(text: str, width: int = 72) -> str:
    """The first sentence of the file's leading comment block (command examples excluded),
    shortened to ``width`` characters at a word boundary."""
    words: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line.lstrip("#")
        if body.startswith("  ") or not body.strip():  # an indented command example
            break
        words += body.split()
    sentence = " ".join(words)
    for end in (". ", "; "):
        if end in sentence:
            sentence = sentence.split(end, 1)[0]
    sentence = sentence.rstrip(".:,;")
    if len(sentence) > width:
        sentence = sentence[: width - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return sentence


def _read_recipe(path: Path, family: str) -> Recipe:
    text = path.read_text(encoding="utf-8")
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    model = (config.get("model") or {}).get("init_args") or {}
    data = (config.get("data") or {}).get("init_args") or {}
    kind = str(model.get("stage") or data.get("task") or data.get("stage") or "")
    if family != "pretrain" and data.get("source"):
        kind += f" ({data['source']})"
    trainer = config.get("trainer") or {}
    return Recipe(
        name=path.stem,
        path=path,
        family=family,
        kind=kind,
        description=_description(text),
        export_dir=model.get("export_dir"),
        root_dir=trainer.get("default_root_dir"),
    )


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, by family then name; ``name`` is the stem where it is unique
    and ``<family>/<stem>`` otherwise."""
    root = recipes_dir()
    order = {family: i for i, family in enumerate(FAMILIES)}
    paths = sorted(root.glob("*/*.yaml"), key=lambda p: (order.get(p.parent.name, len(order)), p.parent.name, p.stem))
    found = [_read_recipe(p, p.parent.name) for p in paths]
    stems: dict[str, int] = {}
    for r in found:
        stems[r.path.stem] = stems.get(r.path.stem, 0) + 1
    return [r if stems[r.path.stem] == 1 else dataclasses.replace(r, name=r.qualified) for r in found]


def _normalise(name: str) -> str:
    name = name.strip().replace("\\", "/")
    for prefix in ("./", "recipes/"):
        name = name.removeprefix(prefix)
    for suffix in (".yaml", ".yml"):
        name = name.removesuffix(suffix)
    return name


def find_recipe(name_or_path: str | Path) -> Path:
    """The recipe file ``name_or_path`` means: the file itself when it exists, else the
    shipped recipe of that name (see the module docstring). Raises :class:`ShippedNotFound`
    naming the shipped recipes when none matches, or the candidates when a stem is
    ambiguous."""
    given = Path(name_or_path)
    if given.is_file():
        return given
    key = _normalise(str(name_or_path))
    recipes = list_recipes()
    matches = [r for r in recipes if key in (r.qualified, r.path.stem)]
    exact = [r for r in matches if key == r.qualified]
    if exact:
        return exact[0].path
    if len(matches) == 1:
        return matches[0].path
    if len(matches) > 1:
        raise ShippedNotFound(
            f"recipe name {str(name_or_path)!r} is ambiguous: "
            + ", ".join(r.qualified for r in matches)
            + "; give the family too"
        )
    names = [r.name for r in recipes]
    close = difflib.get_close_matches(key, names + [r.qualified for r in recipes], n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ShippedNotFound(
        f"{name_or_path}: no such file and no shipped recipe of that name{hint}; "
        "`flava-zoo recipes` lists the shipped recipes"
    )


def recipe_exporting_to(path: str | Path) -> Recipe | None:
    """The shipped recipe whose run writes ``path`` (its ``export_dir``, or a file under its
    ``default_root_dir``, such as a checkpoint), or ``None``. Names the recipe to run first
    when a later stage's ``init_from`` is missing."""
    target = Path(path)
    try:
        recipes = list_recipes()
    except (ShippedNotFound, ValueError):
        return None
    for r in recipes:
        if r.export_dir and Path(r.export_dir) == target:
            return r
    for r in recipes:
        if r.root_dir and target.is_relative_to(Path(r.root_dir)):
            return r
    return None


def list_suites() -> list[Path]:
    """The shipped suite files, by name."""
    return sorted(suites_dir().glob("*.yaml"))


def find_suite(name_or_path: str | Path) -> Path:
    """A suite file: ``name_or_path`` itself, else ``benchmarks/suites/<name>.yaml`` under the
    working directory, else the shipped suite of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path).removesuffix(".yaml")
    local = Path.cwd() / "benchmarks" / "suites" / f"{name}.yaml"
    if local.is_file():
        return local
    try:
        shipped = suites_dir() / f"{name}.yaml"
        names = [p.stem for p in list_suites()]
    except ShippedNotFound:
        shipped, names = None, []
    if shipped is not None and shipped.is_file():
        return shipped
    raise ShippedNotFound(f"no suite file {path} and no shipped suite named {name!r} (shipped: {names})")
