"""The README stays true: every error code and every setting (with its default) is documented, every route is in
the Endpoints table, and every internal link of the three READMEs resolves."""
import os
import re
from dataclasses import fields

from conftest import ROOT
from image_gateway import errors, settings

README = (ROOT / "README.md").read_text()


def test_every_error_code_is_in_the_readme_with_its_status():
    for error in errors.ALL_CODES:
        assert f"| `{error.code}` | {error.status} |" in README, error.code


def test_every_setting_is_in_the_readme():
    for field in fields(settings.Settings):
        assert f"| `{field.name.upper()}` |" in README, field.name


def test_settings_are_read_from_the_environment_and_validated():
    loaded = settings.load({"BATCH_SIZE": "8", "REQUEST_TIMEOUT": "2.5", "API_KEY": "k"})
    assert (loaded.batch_size, loaded.request_timeout, loaded.api_key) == (8, 2.5, "k")
    for bad in ({"WIRE_DTYPE": "int64"}, {"BATCH_SIZE": "0"}, {"TOP_K": "50"}):
        try:
            settings.load(bad)
        except ValueError as exc:
            assert list(bad)[0] in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")


def test_the_endpoints_table_lists_exactly_the_routes():
    from image_gateway.web.app import create_app
    app = create_app(settings.Settings(redis_url="redis://127.0.0.1:1/0"))
    routes = {f"{method} {rule.rule}" for rule in app.url_map.iter_rules()
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    section = README.split("### Endpoints", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z]+ /[^`]*)` \|", section, re.MULTILINE))
    assert documented == routes


def settings_table() -> list[tuple[str, str]]:
    """(VARIABLE, default cell) of every row of the README's Settings table."""
    section = README.split("\n## Settings\n", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"^\| `([A-Z0-9_]+)` \| (.*?) \| ", section, re.MULTILINE)


# Settings whose default is None because the value is found at run time: the table says what it will be.
FOUND_AT_RUN_TIME = {"REDIS_SERVER_BIN": "redis-server", "MODEL_LABELS": "ImageNet names", "KERAS_HOME": "~/.keras",
                     "SERVER_NAME": "HOST:PORT"}


def table_text(name: str, default) -> str:
    """A default as the Settings table writes it."""
    if name in FOUND_AT_RUN_TIME:
        return FOUND_AT_RUN_TIME[name]
    if default is None or default == "":
        return "unset"
    if isinstance(default, bool):
        return "1" if default else "0"
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, str) and os.path.isabs(default):
        return os.path.basename(default)             # a file the package ships (PIPELINES)
    return str(default)


def test_the_settings_table_lists_exactly_the_settings_with_their_defaults():
    rows = settings_table()
    names = [name for name, _ in rows]
    assert sorted(names) == sorted(field.name.upper() for field in fields(settings.Settings))
    assert len(set(names)) == len(names)
    defaults = {field.name.upper(): field.default for field in fields(settings.Settings)}
    for name, cell in rows:
        shown = re.match(r"`([^`]*)`", cell)
        assert (shown[1] if shown else cell) == table_text(name, defaults[name]), (name, cell)


DOCS = {path: (ROOT / path).read_text() for path in ("README.md", "deploy/README.md", "bench/README.md")}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces to hyphens,
    a repeated one numbered."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", FENCED.sub("", markdown), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def test_every_internal_link_of_the_readmes_resolves():
    checked = 0
    for path, text in DOCS.items():
        for target in LINK.findall(FENCED.sub("", text)):
            if re.match(r"[a-z]+:", target):
                continue                                  # http(s), mailto: not ours to check offline
            file, _, anchor = target.partition("#")
            linked = (ROOT / path).parent / file if file else ROOT / path
            assert linked.exists(), f"{path}: {target}: no {linked.relative_to(ROOT)}"
            if anchor:
                assert anchor in anchors(linked.read_text()), f"{path}: {target}: no such heading"
            checked += 1
    assert checked > 10


def test_the_anchor_rules_are_githubs():
    assert anchors("## On one machine: `python -m deploy.cluster`\n## Use it\n## Use it\n```\n# not one\n```\n") == {
        "on-one-machine-python--m-deploycluster", "use-it", "use-it-1"}
