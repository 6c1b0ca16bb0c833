"""Install the diprocd package and its four commands."""

import re

from setuptools import setup

with open("diprocd/__init__.py") as handle:
    VERSION = re.search(r'__version__ = "([^"]+)"', handle.read()).group(1)

setup(
    name="diprocd",
    version=VERSION,
    description="DIstributed PROcess Control Daemon",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=["diprocd"],
    python_requires=">=3.9",
    install_requires=["pyzmq>=24", "pynacl>=1.5", "simplejson>=3.18",
                      "python-daemon>=2.3", "prometheus_client>=0.16"],
    entry_points={"console_scripts": [
        "dpd-workerd = diprocd.cli:workerd_main",
        "dpd-masterd = diprocd.cli:masterd_main",
        "dpd-clientd = diprocd.cli:clientd_main",
        "dpdctl = diprocd.ctl:main",
    ]},
)
