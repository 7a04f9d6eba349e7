"""The documentation: the MkDocs site builds with --strict (a warning, a broken link or anchor,
or a page missing from the navigation fails it), every setting and every module is on its page,
and the README stays a front page whose links lead somewhere."""

from __future__ import annotations

import dataclasses
import typing
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from mojavox_notify.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_BYTES = 15_000
# What the site publishes from outside docs/ (pymdownx.snippets), besides mkdocs.yml itself.
SNIPPET_SOURCES = ["README.md", "CHANGELOG.md", "settings.yaml", "clients/js/README.md"]


def mkdocs_build(project: Path, site: Path) -> subprocess.CompletedProcess:
    # Material 9.x prints a banner about its end of life (May 2027) on every build: an
    # advisory, not a warning about these pages.
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=project, env=environment, capture_output=True, text=True, timeout=120)


def problems(build: subprocess.CompletedProcess) -> list[str]:
    """MkDocs' WARNING and ERROR lines (--strict turns the warnings into a failed build)."""
    return [line for line in (build.stdout + build.stderr).splitlines()
            if re.match(r"\s*(WARNING|ERROR)\b", line)]


def test_the_site_builds_strictly_with_every_page(tmp_path):
    build = mkdocs_build(ROOT, tmp_path / "site")
    assert build.returncode == 0 and not problems(build), build.stdout + build.stderr
    pages = sorted(path.relative_to(DOCS).with_suffix("").as_posix() for path in DOCS.rglob("*.md"))
    for page in pages:
        built = tmp_path / "site" / ("index.html" if page == "index" else f"{page}/index.html")
        assert built.is_file(), f"docs/{page}.md was not built"
    settings_page = (tmp_path / "site" / "settings" / "index.html").read_text(encoding="utf-8")
    assert "--8&lt;--" not in settings_page, "a snippet was not included in the settings page"
    assert "Folder for the embedded storage file" in settings_page, (
        "settings.yaml was not included in the settings page")


def test_a_broken_link_an_unknown_anchor_and_a_page_outside_the_nav_fail_the_build(tmp_path):
    """The strict build is only worth running if it catches these: sabotage a copy and see."""
    project = tmp_path / "project"
    shutil.copytree(DOCS, project / "docs")
    for name in ["mkdocs.yml", *SNIPPET_SOURCES]:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, project / name)
    with (project / "docs" / "rest-api.md").open("a", encoding="utf-8") as page:
        page.write("\nSee [the missing page](no-such-page.md) and "
                   "[a missing section](storage.md#no-such-section).\n")
    (project / "docs" / "orphan.md").write_text("# Not in the nav\n", encoding="utf-8")

    build = mkdocs_build(project, tmp_path / "site")
    assert build.returncode != 0 and problems(build)
    reported = build.stdout + build.stderr
    assert "no-such-page.md" in reported, reported
    assert "no-such-section" in reported, reported
    assert "orphan.md" in reported, reported


def yaml_value(value) -> str:
    """A default as settings.yaml writes it: null, true, [high, critical], 65536."""
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _defaults_of(cls, prefix: str) -> dict[str, str]:
    """Every key of a settings class by its dotted name, a list of sections as `name[]`."""
    keys = {}
    hints = typing.get_type_hints(cls)
    for key in dataclasses.fields(cls):
        hint = hints[key.name]
        element = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else None
        if dataclasses.is_dataclass(hint):
            keys.update(_defaults_of(hint, f"{prefix}{key.name}."))
        elif element is not None and dataclasses.is_dataclass(element):
            keys.update(_defaults_of(element, f"{prefix}{key.name}[]."))
        else:
            default = (key.default if key.default is not dataclasses.MISSING
                       else key.default_factory())
            keys[f"{prefix}{key.name}"] = yaml_value(default)
    return keys


def setting_defaults() -> dict[str, str]:
    keys = {}
    for section in dataclasses.fields(Settings):
        if section.metadata.get("internal"):
            continue
        if section.metadata.get("mapping"):  # escalations.<type>.…, one per notification type
            keys.update(_defaults_of(section.metadata["mapping"], f"{section.name}.<type>."))
            continue
        if section.default_factory is dataclasses.MISSING:
            keys[section.name] = yaml_value(section.default)
            continue
        keys.update(_defaults_of(section.default_factory, f"{section.name}."))
    return keys


def test_every_setting_is_on_the_settings_page_with_its_default():
    """datasette's docs test, for settings: a new key fails the suite until it is documented."""
    text = (DOCS / "settings.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z_.<>\[\]]+)` \| `([^`]*)` \|", text, re.MULTILINE))
    defaults = setting_defaults()
    assert "server.port" in defaults and len(defaults) > 50
    missing = sorted(set(defaults) - set(rows))
    assert not missing, f"docs/settings.md has no row for {missing}"
    stale = sorted(set(rows) - set(defaults))
    assert not stale, f"docs/settings.md documents settings that do not exist: {stale}"
    wrong = {key: (rows[key], default) for key, default in defaults.items() if rows[key] != default}
    assert not wrong, f"docs/settings.md shows other defaults (page, code): {wrong}"


def test_every_module_is_in_the_module_map():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    section = text.split("\n## Modules\n", 1)[1].split("\n## ", 1)[0]
    mapped = set(re.findall(r"^\| `([\w/]+\.py)` \|", section, re.MULTILINE))
    package = ROOT / "mojavox_notify"
    modules = {path.relative_to(package).as_posix() for path in package.rglob("*.py")}
    assert not modules - mapped, f"docs/architecture.md's module map lacks {sorted(modules - mapped)}"
    assert not mapped - modules, f"docs/architecture.md maps modules that are gone: {sorted(mapped - modules)}"


def test_the_readme_is_a_front_page():
    text = README.read_text(encoding="utf-8")
    assert README.stat().st_size <= README_MAX_BYTES, (
        f"README.md is {README.stat().st_size} bytes: move the detail to a page under docs/")
    assert "make run" in text and "make test" in text
    assert "## A five-minute tour" in text


def anchors(markdown: str) -> set[str]:
    """Heading ids as MkDocs (Python-Markdown's toc) and GitHub both make them, for the
    headings these pages use: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6} (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.DOTALL),
                          re.MULTILINE)
    return {re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())
            for heading in headings}


def test_the_readmes_links_lead_somewhere():
    """The site's own links are checked by the strict build; the README is read on GitHub."""
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text(encoding="utf-8"))
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        file = (ROOT / target) if target else README
        assert file.exists(), f"README.md links to {link}, which does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file.read_text(encoding="utf-8")), (
                f"README.md links to {link}: no such heading")
