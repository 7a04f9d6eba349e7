import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithWebClient(build_py):
    """Wheels carry the JavaScript client (clients/js/, its one source) next to the page that
    imports it; a source checkout serves it from clients/js/ directly."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "mojavox_notify" / "static"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / "clients" / "js" / "mojavox-notify.js", target / "mojavox-notify.js")


setup(
    name="mojavox-notify",
    version="0.1.0",
    description="Real-time notification backend of MOJAVOX: WebSocket, REST, plugins, web push",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["mojavox_notify", "mojavox_notify.*"]),
    package_data={"mojavox_notify": ["static/*"]},
    cmdclass={"build_py": BuildWithWebClient},
    install_requires=[
        "tornado>=6.4,<7",
        "pymongo>=4.13,<5",
        "nx-27017>=0.8,<0.9",
        "redis>=5,<9",
        "PyJWT[crypto]>=2.8,<3",
        "cryptography>=42",
        "pluggy>=1.5,<2",
        "pywebpush>=2,<3",
        "nh3>=0.2.17,<0.4",
        "PyYAML>=6,<7",
        "orjson>=3.9,<4",
        "prometheus-client>=0.20,<1",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-tornado>=0.8,<0.9",
            "pytest-timeout>=2.3,<3",
            "hypothesis>=6.100,<7",
            # Drives the system's chromium (never downloads a browser): tests/test_browser.py.
            "playwright>=1.40,<2",
        ],
    },
    entry_points={"console_scripts": ["mojavox-notify=mojavox_notify.cli:main"]},
)
