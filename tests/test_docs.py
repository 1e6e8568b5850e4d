"""The README stays true: every error code and every setting is documented."""
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
    import re

    from image_gateway.web.app import create_app
    app = create_app(settings.Settings(redis_url="redis://127.0.0.1:1/0"))
    routes = {f"{method} {rule.rule}" for rule in app.url_map.iter_rules()
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    section = README.split("### Endpoints", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z]+ /[^`]*)` \|", section, re.MULTILINE))
    assert documented == routes
