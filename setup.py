"""Build hook: ship the checkout's top-level ``recipes/`` and ``benchmarks/suites/`` inside the
package, as ``flava_zoo/_shipped/recipes`` and ``flava_zoo/_shipped/suites``.

Why a hook: the repository keeps both folders at its top level (they are part of the product's
layout), and setuptools' ``package_data`` only takes files inside a package. The alternative, a
``package_dir`` mapping of a data subpackage (``flava_zoo._shipped.recipes = recipes``), needs
``__init__.py`` files in those folders or namespace-package warnings, and ``pip install -e .``
maps nested packages that live outside ``flava_zoo/`` through its editable finder only in some
modes. The hook copies the YAML files into the build folder after ``build_py``, so a wheel (and
an sdist built into one: ``MANIFEST.in`` carries the folders) holds them; an editable install
needs no copy, because :mod:`flava_zoo.shipped` reads the checkout the package is imported from
when the package has no ``_shipped`` folder. Everything else is declared in ``setup.cfg``.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = {"recipes": "recipes", "suites": "benchmarks/suites"}
"""Folder inside ``flava_zoo/_shipped`` -> folder of the checkout it is copied from."""


class build_py_with_shipped(build_py):
    """``build_py`` that also copies the recipes and suites (``*.yaml``) into the package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout itself
        root = Path(__file__).resolve().parent
        for inside, source in SHIPPED.items():
            files = sorted((root / source).rglob("*.yaml"))
            if not files:
                raise SystemExit(f"setup.py: no *.yaml under {root / source}: the package would ship no {inside}")
            for path in files:
                target = Path(self.build_lib) / "flava_zoo" / "_shipped" / inside / path.relative_to(root / source)
                self.mkpath(str(target.parent))
                self.copy_file(str(path), str(target))


setup(cmdclass={"build_py": build_py_with_shipped})
