"""The source tree is `services/` but the import name is `linesight`; pyproject alone cannot rename."""

from setuptools import find_namespace_packages, setup

setup(
    package_dir={"linesight": "services"},
    packages=["linesight", *(f"linesight.{p}" for p in find_namespace_packages("services"))],
)
