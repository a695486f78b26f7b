# Kept only so that editable installs work with older pip; metadata lives in setup.cfg.
from setuptools import setup

setup()
