"""Build hooks; the metadata lives in setup.cfg.

build_py adds to the built package what does not live in it:
  sunsetd/profiles/*.yaml   the repository's top-level profiles/ (found by sunsetd.profile.search_path())
  sunsetd/completions/      bash and zsh completion scripts, generated from the argparse parsers by
                            sunsetd._completion (at build time: nothing is generated at run time)
An editable install (`pip install -e .`) adds neither: it uses the checkout's profiles/ directly.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROFILES = HERE / "profiles"


class BuildPy(build_py):
    def run(self):
        super().run()
        self._extra = []
        if getattr(self, "editable_mode", False):
            return
        package = Path(self.build_lib) / "sunsetd"
        target = package / "profiles"
        for stale in (target, package / "completions"):  # build/ may hold an earlier build's
            shutil.rmtree(stale, ignore_errors=True)
        self.mkpath(str(target))
        for src in sorted(PROFILES.glob("*.yaml")):
            self.copy_file(str(src), str(target / src.name), preserve_mode=False)
            self._extra.append(str(target / src.name))
        self._extra += self._completions(package / "completions")

    def _completions(self, target):
        # A child, so that the build's own interpreter never imports sunsetd.cli (its imports, pyzmq and
        # msgpack, are in pyproject.toml's build requirements).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        result = subprocess.run([sys.executable, "-m", "sunsetd._completion", str(target), "--profiles", str(PROFILES)],
                                cwd=str(HERE), env=env, capture_output=True, text=True)
        if result.returncode != 0:
            self.warn("shell completions not generated (the wheel will carry none):\n" + result.stderr.strip())
            return []
        return result.stdout.split()

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + list(getattr(self, "_extra", []))


setup(cmdclass={"build_py": BuildPy})
