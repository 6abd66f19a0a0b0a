"""Build hook: a built wheel carries a copy of the repository's dataflows and node scripts.

The flows are edited in one place, the repository root (``dataflow*.yml`` and ``nodes/<id>/main.py``);
nothing is committed twice.  When a wheel is built (``pip install .``, ``pip wheel .``), ``build_py``
copies them into ``so101_deploy/flows/`` with the same relative shape (the YAMLs name their nodes as
``nodes/<id>/main.py``), so an installed ``so101-deploy demo`` finds them without the repository
(``so101_deploy.core.dataflow.flows_root``).  Editable installs read the checkout and get no copy.
Everything else (name, dependencies, packages) is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
FLOW_PATTERNS = ("dataflow*.yml", "nodes/*/*.py")
FLOWS_PACKAGE_DIR = Path("so101_deploy", "flows")


def flow_sources() -> list[Path]:
    files = sorted({p for pattern in FLOW_PATTERNS for p in ROOT.glob(pattern) if p.is_file()})
    if not any(p.name == "dataflow.yml" for p in files):
        raise RuntimeError(f"no dataflow.yml in {ROOT}: the wheel would ship without its flows")
    return files


class BuildPyWithFlows(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib, FLOWS_PACKAGE_DIR)
        shutil.rmtree(target, ignore_errors=True)  # no stale flows from an earlier build
        for src in flow_sources():
            dst = target / src.relative_to(ROOT)
            self.mkpath(str(dst.parent))
            self.copy_file(str(src), str(dst))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if not self.editable_mode:
            outputs += [str(Path(self.build_lib, FLOWS_PACKAGE_DIR, p.relative_to(ROOT))) for p in flow_sources()]
        return outputs


setup(cmdclass={"build_py": BuildPyWithFlows})
