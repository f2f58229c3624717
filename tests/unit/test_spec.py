"""The release spec (knightwatch.toml): every careless or hostile spec is refused.

Each refusal is a :class:`SpecError` (an :class:`InvalidInputError`, exit code
2) whose message starts with the file and the key path and then says what
form was expected. Comments marked ``Regression`` name a bug these tests once
caught, so it stays fixed.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import pytest

from knightwatch.bundle import ReleaseSpec, load_spec, parse_spec
from knightwatch.bundle.spec import MAX_SPEC_BYTES
from knightwatch.errors import InvalidInputError, SpecError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_SPEC = REPO / "examples" / "smars" / "knightwatch.toml"
FILE = "releases/shop/knightwatch.toml"

RELEASE = '[release]\nname = "shop"\nversion = "1.0.0"\n'
CORE = '\n[[component]]\nname = "core"\nversion = "1.0.0"\npaths = ["core/**"]\n'
BASE = RELEASE + CORE
SERVICE = '\n[service]\ncommand = ["bin/shop"]\n'


def component(name: str, *, paths: str | None = None, depends_on: list[str] | None = None) -> str:
    """Return one ``[[component]]`` table."""
    text = f'\n[[component]]\nname = "{name}"\nversion = "1.0.0"\n'
    text += f"paths = {paths}\n" if paths is not None else f'paths = ["{name}/**"]\n'
    if depends_on is not None:
        text += f"depends_on = {json.dumps(depends_on)}\n"
    return text


def flag(name: str, *, kind: str = "ops", default: str = "false") -> str:
    """Return one ``[[flag]]`` table."""
    return (
        f'\n[[flag]]\nname = "{name}"\nkind = "{kind}"\ndescription = "a flag"\n'
        f"default = {default}\n"
    )


def guard(name: str, rule: str, extra: str = "") -> str:
    """Return one ``[[guard]]`` table (``rule`` is a TOML literal string)."""
    return f"\n[[guard]]\nname = \"{name}\"\nrule = '{rule}'\n{extra}"


def release_with(extra: str) -> str:
    """Return the base spec with ``extra`` lines added to ``[release]``."""
    return RELEASE + extra + "\n" + CORE


def refused(text: str, key: str | None, *expected: str, file: str = FILE) -> SpecError:
    """Parse ``text``, assert a SpecError naming file and key, and return it."""
    with pytest.raises(SpecError) as info:
        parse_spec(text, file=file)
    error = info.value
    message = str(error)
    assert isinstance(error, InvalidInputError)
    assert error.exit_code == 2
    assert error.file == file
    assert message.startswith(f"{file}: ")
    if key is not None:
        assert error.key == key, message
        assert message.startswith(f"{file}: {key}: "), message
    for fragment in expected:
        assert fragment in message, message
    return error


class TestUnknownKeys:
    """Unknown keys are refused at every level, naming the key's full path."""

    def test_top_level_key(self) -> None:
        """A stray key before ``[release]`` is refused as an unknown top-level key."""
        refused("bogus = 1\n" + BASE, "bogus", "unknown key")

    def test_top_level_table(self) -> None:
        """An unknown table is refused by its name."""
        refused(BASE + "\n[deploy]\nfast = true\n", "deploy", "unknown key")

    def test_release_key(self) -> None:
        """A misspelt ``[release]`` key is refused with its dotted path."""
        refused(release_with("allow_symlink = true"), "release.allow_symlink", "unknown key")

    def test_component_key(self) -> None:
        """A misspelt key in the second component is refused with its index."""
        text = BASE + component("web") + "dependson = []\n"
        refused(text, "component[1].dependson", "unknown key")

    def test_nested_service_halt_key(self) -> None:
        """An unknown key in ``[service.halt]`` is refused as ``service.halt.<key>``."""
        text = BASE + SERVICE + '\n[service.halt]\nsignal = "SIGTERM"\ntimeout = 3\n'
        refused(text, "service.halt.timeout", "unknown key")

    def test_inline_table_key(self) -> None:
        """An unknown key in an inline table (health) is refused with its path."""
        text = BASE + SERVICE + 'health = { http = "http://127.0.0.1:1/h", retries = 3 }\n'
        refused(text, "service.health.retries", "unknown key")

    def test_smoke_array_key(self) -> None:
        """An unknown key inside an array of inline tables names the element index."""
        text = BASE + SERVICE + 'smoke = [{ name = "v", http = "http://a/", method = "POST" }]\n'
        refused(text, "service.smoke[0].method", "unknown key")


class TestWrongTypes:
    """Values of the wrong TOML type are refused; nothing is coerced."""

    def test_version_integer(self) -> None:
        """``version = 1`` is refused: a version is a string."""
        text = RELEASE.replace('version = "1.0.0"', "version = 1") + CORE
        refused(text, "release.version", "should be a string in quotes")

    def test_version_date(self) -> None:
        """A TOML date is not silently turned into a version string."""
        text = RELEASE.replace('version = "1.0.0"', "version = 2012-08-01") + CORE
        refused(text, "release.version", "should be a string in quotes")

    def test_paths_string(self) -> None:
        """``paths = "x"`` is refused: paths is a list of globs."""
        refused(BASE + component("web", paths='"web/**"'), "component[1].paths", "should be a list")

    def test_bool_as_string(self) -> None:
        """``allow_symlinks = "yes"`` is refused: it is a boolean."""
        refused(release_with('allow_symlinks = "yes"'), "release.allow_symlinks", "true or false")

    def test_size_as_string(self) -> None:
        """``max_file_size = "10"`` is refused: it is an integer."""
        refused(release_with('max_file_size = "10"'), "release.max_file_size", "whole number")

    def test_size_as_float(self) -> None:
        """``max_file_size = 1.5`` is refused: sizes are whole bytes."""
        refused(release_with("max_file_size = 1.5"), "release.max_file_size", "whole number")

    def test_flag_default_list(self) -> None:
        """A flag default must be a scalar; a list is refused with every accepted type named."""
        refused(
            BASE + flag("f", default="[]"), "flag[0].default", "true or false", "string", "not []"
        )

    def test_command_number(self) -> None:
        """``service.command = 7`` is refused saying what to write: a list (or a string)."""
        refused(
            BASE + "\n[service]\ncommand = 7\n",
            "service.command",
            'a list, e.g. ["python3", "app/main.py"]',
            'one string, e.g. "python3 app/main.py"',
        )


class TestCommandString:
    """``command = "python3 app/main.py"`` is split as a shell splits words, and run without one."""

    @pytest.mark.parametrize(
        ("written", "argv"),
        [
            ("python3 app/main.py", ["python3", "app/main.py"]),
            (
                "bin/shop --port 8080 --name 'the shop'",
                ["bin/shop", "--port", "8080", "--name", "the shop"],
            ),
            ('bin/shop "a b" c\\ d', ["bin/shop", "a b", "c d"]),
            ("  bin/shop  ", ["bin/shop"]),
            (
                "bin/shop --port ${KNIGHTWATCH_SERVICE_PORT}",
                ["bin/shop", "--port", "${KNIGHTWATCH_SERVICE_PORT}"],
            ),
        ],
    )
    def test_a_string_is_split_into_words(self, written: str, argv: list[str]) -> None:
        """The string becomes the argv a shell would build, and the spec stores the list."""
        text = BASE + f"\n[service]\ncommand = {_toml_string(written)}\n"
        spec = parse_spec(text, file=FILE)
        assert spec.service is not None
        assert spec.service.command == argv
        assert spec.to_json()["service"]["command"] == argv

    def test_health_and_halt_hook_take_strings_too(self) -> None:
        """Every argv key of the spec takes the same string form."""
        text = BASE + SERVICE + 'health = { command = "bin/check --quick" }\n'
        text += '\n[service.halt]\nhook = "bin/shop halt"\n'
        spec = parse_spec(text, file=FILE)
        assert spec.service is not None and spec.service.health is not None
        assert spec.service.health.command == ["bin/check", "--quick"]
        assert spec.service.halt.hook == ["bin/shop", "halt"]

    @pytest.mark.parametrize(
        ("written", "fragment"),
        [
            ("bin/shop | tee log", "'|'"),
            ("bin/migrate && bin/shop", "'&&'"),
            ("bin/a; bin/b", "';'"),
            ("bin/shop > out.log", "'>'"),
            ("bin/shop < in", "'<'"),
            ("bin/shop &", "'&'"),
            ("bin/shop --port $PORT", "$PORT"),
            ("bin/shop $(cat args)", "needs a shell"),
            ("bin/shop `cat args`", "needs a shell"),
        ],
    )
    def test_what_needs_a_shell_is_refused_with_the_list_form(
        self, written: str, fragment: str
    ) -> None:
        """Operators and expansions would silently mean something else without a shell."""
        text = BASE + f"\n[service]\ncommand = {_toml_string(written)}\n"
        error = refused(text, "service.command", fragment, "without a shell")
        assert "[" in str(error)

    @pytest.mark.parametrize(
        ("written", "fragment"),
        [("", "is empty"), ("   ", "is empty"), ("bin/shop 'open", "cannot be split")],
    )
    def test_an_unusable_string_is_refused(self, written: str, fragment: str) -> None:
        """An empty string or an unclosed quote is refused by key."""
        text = BASE + f"\n[service]\ncommand = {_toml_string(written)}\n"
        refused(text, "service.command", fragment)

    def test_the_list_form_keeps_shell_characters_literally(self) -> None:
        """In the list form, ``$`` and ``|`` are plain characters of an argument."""
        text = BASE + '\n[service]\ncommand = ["bin/shop", "--sep", "|", "$HOME"]\n'
        spec = parse_spec(text, file=FILE)
        assert spec.service is not None
        assert spec.service.command == ["bin/shop", "--sep", "|", "$HOME"]


def _toml_string(text: str) -> str:
    """``text`` as a TOML literal string (no escapes needed for these tests)."""
    return "'''" + text + "'''"


class TestMissingFields:
    """Required keys are named when missing."""

    def test_component_without_paths(self) -> None:
        """A component without ``paths`` is refused as ``component[1].paths``."""
        text = BASE + '\n[[component]]\nname = "web"\nversion = "1.0.0"\n'
        refused(text, "component[1].paths", "required key is missing")

    def test_release_without_name(self) -> None:
        """``[release]`` without ``name`` is refused as ``release.name``."""
        refused(BASE.replace('name = "shop"\n', ""), "release.name", "required key is missing")

    def test_no_release_table(self) -> None:
        """A spec without ``[release]`` is refused."""
        refused(CORE, "release", "required key is missing")

    def test_no_component(self) -> None:
        """A spec without any ``[[component]]`` is refused."""
        refused(RELEASE, "component", "required key is missing")

    def test_empty_text(self) -> None:
        """An empty file is refused, naming the first missing table and counting the rest."""
        refused("", "release", "required key is missing", "1 more", "component")

    def test_service_without_command(self) -> None:
        """``[service]`` without ``command`` is refused."""
        refused(BASE + '\n[service]\ndata_dirs = ["var"]\n', "service.command", "missing")

    def test_flag_without_kind(self) -> None:
        """A flag without ``kind`` is refused."""
        text = BASE + '\n[[flag]]\nname = "f"\ndescription = "d"\ndefault = false\n'
        refused(text, "flag[0].kind", "required key is missing")


class TestReferences:
    """Cross-references: dependencies resolve, form no cycle, and names are unique."""

    def test_duplicate_dependency(self) -> None:
        """A ``depends_on`` entry listed twice is refused at its second index."""
        text = BASE + component("web", depends_on=["core", "core"])
        refused(text, "component[1].depends_on[1]", "'core' is listed twice")

    def test_unknown_dependency(self) -> None:
        """An unknown ``depends_on`` entry is refused with its exact index and the known names."""
        text = BASE + component("web", depends_on=["core", "databse"])
        refused(
            text,
            "component[1].depends_on[1]",
            "unknown component 'databse'",
            "expected one of: core, web",
        )

    def test_self_dependency(self) -> None:
        """A component depending on itself is refused."""
        text = BASE + component("web", depends_on=["web"])
        refused(text, "component[1].depends_on[0]", "cannot depend on itself")

    def test_two_cycle(self) -> None:
        """``a -> b -> a`` is refused and the cycle is spelt out."""
        text = RELEASE + component("a", depends_on=["b"]) + component("b", depends_on=["a"])
        refused(text, "component", "cycle", "a -> b -> a")

    def test_three_cycle_behind_a_root(self) -> None:
        """A cycle not reachable from the first component is still found."""
        text = (
            RELEASE
            + component("root")
            + component("x", depends_on=["y"])
            + component("y", depends_on=["z"])
            + component("z", depends_on=["x"])
        )
        refused(text, "component", "x -> y -> z -> x")

    def test_long_cycle_refused(self) -> None:
        """A cycle through all 1000 components (the maximum) is refused, not a crash."""
        count = 1000
        text = RELEASE + "".join(
            component(f"c{i}", depends_on=[f"c{(i + 1) % count}"]) for i in range(count)
        )
        # Regression: _refuse_cycles once recursed per component, so a long chain
        # raised RecursionError (not SpecError) from parse_spec.
        refused(text, "component", "cycle")

    def test_long_chain_at_the_bound_parses(self) -> None:
        """An acyclic chain of 1000 components (within the bound) is accepted."""
        count = 1000
        text = RELEASE + "".join(
            component(f"c{i}", depends_on=[f"c{i + 1}"] if i + 1 < count else None)
            for i in range(count)
        )
        # Regression: once a RecursionError from the recursive cycle check.
        spec = parse_spec(text, file=FILE)
        assert len(spec.component) == count

    def test_duplicate_component(self) -> None:
        """Two components with one name are refused at the second."""
        text = BASE + component("web") + component("core", paths='["other/**"]')
        refused(text, "component[2].name", "duplicate component name 'core'")

    def test_duplicate_flag(self) -> None:
        """Two flags with one name are refused at the second."""
        text = BASE + flag("rlp.enabled") + flag("smars.halt") + flag("rlp.enabled")
        refused(text, "flag[2].name", "duplicate flag name 'rlp.enabled'")

    def test_duplicate_guard(self) -> None:
        """Two guards with one name are refused at the second."""
        text = BASE + guard("g", "a > b") + guard("g", "a < b")
        refused(text, "guard[1].name", "duplicate guard name 'g'")


class TestEnumerations:
    """Closed vocabularies list the accepted values."""

    def test_flag_kind(self) -> None:
        """An invalid flag kind is refused, listing the four kinds."""
        refused(
            BASE + flag("f", kind="permanent"),
            "flag[0].kind",
            "'release', 'ops', 'kill' or 'experiment'",
        )

    def test_guard_severity(self) -> None:
        """An invalid guard severity is refused, listing the severities."""
        text = BASE + guard("g", "a > b", 'severity = "fatal"\n')
        refused(text, "guard[0].severity", "'info', 'warning' or 'critical'")

    def test_guard_action(self) -> None:
        """An invalid guard action is refused, listing the actions."""
        text = BASE + guard("g", "a > b", 'action = "panic"\n')
        refused(text, "guard[0].action", "'alert', 'halt_node' or 'halt_fleet'")

    def test_halt_signal(self) -> None:
        """A signal outside the allowed set (SIGSTOP cannot stop a process) is refused."""
        text = BASE + SERVICE + 'halt = { signal = "SIGSTOP" }\n'
        refused(text, "service.halt.signal", "'SIGTERM'")


class TestExpressions:
    """Guard rules must be CEL and log patterns regular expressions, checked at parse time."""

    def test_invalid_cel(self) -> None:
        """Invalid CEL is refused with the line:column of the error."""
        text = BASE + guard("g", "a > > b")
        refused(text, "guard[0].rule", "not a valid CEL expression", "1:5")

    def test_unbalanced_cel(self) -> None:
        """An unclosed parenthesis in CEL is refused."""
        refused(BASE + guard("g", "(a > b"), "guard[0].rule", "not a valid CEL expression", "1:")

    def test_deeply_nested_cel(self) -> None:
        """A rule nested 2000 deep is refused cleanly (no crash)."""
        rule = "(" * 2000 + "1" + ")" * 2000
        refused(BASE + guard("g", rule), "guard[0].rule", "not a valid CEL expression")

    def test_valid_cel(self) -> None:
        """A well-formed CEL rule is accepted unchanged."""
        spec = parse_spec(BASE + guard("g", "errors_total / requests_total > 0.05"))
        assert spec.guard[0].rule == "errors_total / requests_total > 0.05"

    def test_invalid_regex(self) -> None:
        """An invalid log_pattern regex is refused with the regex engine's reason."""
        text = BASE + SERVICE + "log_pattern = [{ name = \"p\", regex = '(unclosed' }]\n"
        refused(
            text,
            "service.log_pattern[0].regex",
            "not a valid regular expression",
            "missing )",
        )

    def test_regex_huge_repetition(self) -> None:
        """A regex whose repeat count overflows the engine is refused, not a crash."""
        text = BASE + SERVICE + "log_pattern = [{ name = \"p\", regex = 'a{4294967296}' }]\n"
        # Regression: re.compile raises OverflowError, which _regex_compiles once let
        # escape, so parse_spec raised OverflowError instead of SpecError.
        refused(text, "service.log_pattern[0].regex", "not a valid regular expression")

    def test_regex_deep_nesting(self) -> None:
        """A regex of 500 nested groups (within the length bound) is refused, not a crash."""
        regex = "(" * 500 + ")" * 500
        text = BASE + SERVICE + f"log_pattern = [{{ name = \"p\", regex = '{regex}' }}]\n"
        # Regression: re.compile raises RecursionError, once uncaught by _regex_compiles.
        refused(text, "service.log_pattern[0].regex", "not a valid regular expression")


class TestGlobs:
    """Component paths and exclude globs must be relative, ``..``-free and well formed."""

    @pytest.mark.parametrize(
        ("glob", "fragment"),
        [
            ("/etc/*", "must be relative"),
            ("../secrets/*", "must not contain '..'"),
            ("core/../../x", "must not contain '..'"),
            ("core/[ab", "unclosed '['"),
        ],
    )
    def test_component_glob(self, glob: str, fragment: str) -> None:
        """A malformed component glob is refused with its key and the reason."""
        text = BASE + component("web", paths=json.dumps([glob]))
        refused(text, "component[1].paths", repr(glob), fragment)

    @pytest.mark.parametrize("glob", ["[z-a].txt", "core/[!]"])
    def test_glob_rejected_by_regex_engine(self, glob: str) -> None:
        """A glob whose bracket set is not a valid range is refused as a SpecError."""
        text = BASE + component("web", paths=json.dumps([glob]))
        # Regression: compile_glob once let re.error (not a ValueError) escape, so
        # parse_spec raised re.error instead of SpecError.
        refused(text, "component[1].paths", repr(glob))

    def test_glob_with_nested_set_no_warning(self) -> None:
        """A glob like ``[[x]`` does not leak a regex FutureWarning to the user."""
        text = BASE + component("web", paths='["web/[[x]"]')
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            # Regression: _translate_segment once copied '[' inside a set unescaped,
            # so re.compile emitted "FutureWarning: Possible nested set".
            with contextlib.suppress(SpecError):
                parse_spec(text, file=FILE)

    def test_exclude_glob(self) -> None:
        """A ``..`` in release.exclude is refused."""
        refused(release_with('exclude = ["../x"]'), "release.exclude", "must not contain '..'")

    def test_empty_glob(self) -> None:
        """An empty glob is refused."""
        text = BASE + component("web", paths='[""]')
        refused(text, "component[1].paths[0]", "at least 1 character")


class TestBounds:
    """Every size is bounded, so a hostile spec cannot make a build or an agent explode."""

    def test_max_file_size_over_limit(self) -> None:
        """``max_file_size`` beyond 64 GiB is refused with the limit."""
        refused(
            release_with(f"max_file_size = {64 * 1024**3 + 1}"),
            "release.max_file_size",
            "less than or equal to 68719476736",
        )

    @pytest.mark.parametrize("value", ["0", "-1"])
    def test_max_file_size_not_positive(self, value: str) -> None:
        """``max_file_size`` must be positive."""
        refused(release_with(f"max_file_size = {value}"), "release.max_file_size", "greater than 0")

    def test_long_description(self) -> None:
        """A 5000-character description is refused (at most 4096)."""
        text = release_with(f'description = "{"x" * 5000}"')
        refused(text, "release.description", "at most 4096 characters")

    def test_description_at_bound(self) -> None:
        """A 4096-character description is accepted."""
        spec = parse_spec(release_with(f'description = "{"x" * 4096}"'))
        assert len(spec.release.description) == 4096

    def test_too_many_components(self) -> None:
        """2000 components are refused (at most 1000)."""
        text = RELEASE + "".join(component(f"c{i}") for i in range(2000))
        refused(text, "component", "at most 1000 items")

    def test_too_many_paths(self) -> None:
        """A component with 1001 globs is refused."""
        paths = json.dumps([f"core/f{i}" for i in range(1001)])
        refused(BASE + component("web", paths=paths), "component[1].paths", "at most 1000 items")

    def test_argv_too_long(self) -> None:
        """A command of 257 arguments is refused (at most 256)."""
        text = BASE + "\n[service]\ncommand = " + json.dumps(["x"] * 257) + "\n"
        refused(text, "service.command", "at most 256 items")

    def test_empty_argv(self) -> None:
        """An empty command is refused."""
        refused(BASE + "\n[service]\ncommand = []\n", "service.command", "at least 1 item")

    def test_long_flag_default(self) -> None:
        """A string flag default over 4096 characters is refused."""
        text = BASE + flag("f", default=json.dumps("x" * 5000))
        refused(text, "flag[0].default", "at most 4096 characters")

    @pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
    def test_flag_default_not_finite(self, value: str) -> None:
        """A non-finite flag default is refused."""
        refused(BASE + flag("f", default=value), "flag[0].default", "finite")

    @pytest.mark.parametrize("value", ["0", "-1.0", "nan", "inf", "86401"])
    def test_grace_out_of_range(self, value: str) -> None:
        """``service.halt.grace_s`` must be a finite number of seconds in (0, 86400]."""
        text = BASE + SERVICE + f"halt = {{ grace_s = {value} }}\n"
        refused(text, "service.halt.grace_s", "Input should be")

    def test_long_name(self) -> None:
        """A 64-character name is refused (at most 63)."""
        text = BASE.replace('name = "shop"', f'name = "{"a" * 64}"')
        refused(text, "release.name", "expected form")


class TestNamesAndVersions:
    """Names and versions have one form, so release IDs (name@version+hex) parse back."""

    @pytest.mark.parametrize("version", ["1.0@2", "1.0+build.5", "", ".1", "1 0", "1.0\\n"])
    def test_bad_version(self, version: str) -> None:
        """A version with '@', '+', spaces, a leading dot or a newline is refused."""
        text = RELEASE.replace('version = "1.0.0"', f'version = "{version}"') + CORE
        refused(text, "release.version", "does not have the expected form")

    @pytest.mark.parametrize("name", ["shop@eu", "shop+x", "Shop", "-shop", "shop/x", "shop\\n"])
    def test_bad_release_name(self, name: str) -> None:
        """A release name outside ``[a-z0-9][a-z0-9._-]*`` is refused."""
        text = RELEASE.replace('name = "shop"', f'name = "{name}"') + CORE
        refused(text, "release.name", "does not have the expected form", "[a-z0-9]")

    def test_bad_component_version(self) -> None:
        """A component version with '+' is refused with the component's index."""
        text = BASE + component("web").replace('version = "1.0.0"', 'version = "2+x"')
        refused(text, "component[1].version", "does not have the expected form")

    def test_bad_flag_name(self) -> None:
        """A flag name must start with a letter."""
        refused(BASE + flag("1flag"), "flag[0].name", "does not have the expected form")


class TestService:
    """``[service]``: paths stay inside the release, probes are unambiguous."""

    @pytest.mark.parametrize("entry", ["../var", "var/../../etc", "/var/lib/shop", ".."])
    def test_data_dirs_outside(self, entry: str) -> None:
        """A data_dirs entry that is absolute or climbs with '..' is refused."""
        text = BASE + SERVICE + f"data_dirs = {json.dumps(['var', entry])}\n"
        refused(text, "service.data_dirs", repr(entry), "relative path inside the release")

    @pytest.mark.parametrize("entry", [".", "./", "/"])
    def test_data_dirs_root(self, entry: str) -> None:
        """A data_dirs entry naming the release root itself is refused (it would unaudit all)."""
        text = BASE + SERVICE + f"data_dirs = {json.dumps([entry])}\n"
        refused(text, "service.data_dirs", repr(entry), "a directory below its root")

    def test_health_both(self) -> None:
        """A health check with both http and command is refused."""
        text = BASE + SERVICE + 'health = { http = "http://a/h", command = ["bin/check"] }\n'
        refused(text, "service.health", "exactly one of 'http'", "'command'")

    def test_health_neither(self) -> None:
        """A health check with neither http nor command is refused."""
        refused(BASE + SERVICE + "health = { timeout_s = 1.0 }\n", "service.health", "exactly one")

    def test_smoke_neither(self) -> None:
        """A smoke check with no probe is refused with its index."""
        text = BASE + SERVICE + 'smoke = [{ name = "v", http = "http://a/" }, { name = "w" }]\n'
        refused(text, "service.smoke[1]", "exactly one")

    def test_health_url_scheme(self) -> None:
        """A health URL that is not http(s) is refused."""
        text = BASE + SERVICE + 'health = { http = "file:///etc/passwd" }\n'
        refused(text, "service.health.http", "expected form", "https?://")

    def test_env_name(self) -> None:
        """An environment variable name that is not an identifier is refused."""
        text = BASE + SERVICE + 'env = { "BAD-NAME" = "1" }\n'
        refused(text, None, "service.env", "BAD-NAME", "expected form")

    def test_nul_in_command(self) -> None:
        """An argv element containing NUL (which no exec can run) is refused."""
        text = BASE + '\n[service]\ncommand = ["bin/shop\\u0000--evil"]\n'
        # Regression: Argv once only bounded length and accepted "\u0000", which no
        # argv element can carry, so the service could never start.
        refused(text, "service.command[0]", "NUL")


class TestMalformedInput:
    """Input that is not a TOML document is refused with the file and a position."""

    def test_malformed_toml(self) -> None:
        """Broken TOML is refused with the line and column."""
        refused(BASE + "x = = 1\n", None, "not valid TOML", "line 9, column 5")

    def test_duplicate_table(self) -> None:
        """A table declared twice is refused as invalid TOML."""
        refused(BASE + RELEASE, None, "not valid TOML", "release")

    def test_deeply_nested_toml(self) -> None:
        """An array nested 5000 deep is refused as a SpecError, not a crash."""
        text = BASE + "x = " + "[" * 5000 + "]" * 5000 + "\n"
        # Regression: tomllib raises RecursionError, which parse_spec once let escape.
        refused(text, None, "TOML")

    def test_load_spec_not_utf8(self, tmp_path: Path) -> None:
        """A spec file that is not UTF-8 is refused by load_spec with the byte offset."""
        (tmp_path / "knightwatch.toml").write_bytes(BASE.encode() + b"# caf\xe9\n")
        with pytest.raises(SpecError) as info:
            load_spec(tmp_path)
        message = str(info.value)
        assert str(tmp_path / "knightwatch.toml") in message
        assert f"not UTF-8 text (byte {len(BASE) + 5})" in message

    def test_load_spec_too_large(self, tmp_path: Path) -> None:
        """A spec file over 1 MiB is refused by load_spec before it is parsed."""
        (tmp_path / "knightwatch.toml").write_text(BASE + "#" + "x" * MAX_SPEC_BYTES + "\n")
        with pytest.raises(SpecError) as info:
            load_spec(tmp_path)
        message = str(info.value)
        assert str(tmp_path / "knightwatch.toml") in message
        assert f"larger than {MAX_SPEC_BYTES} bytes" in message

    def test_load_spec_at_size_limit(self, tmp_path: Path) -> None:
        """A spec file of exactly 1 MiB is read and parsed."""
        padding = MAX_SPEC_BYTES - len(BASE) - 2
        (tmp_path / "knightwatch.toml").write_text(BASE + "#" + "x" * padding + "\n")
        assert (tmp_path / "knightwatch.toml").stat().st_size == MAX_SPEC_BYTES
        assert load_spec(tmp_path).release.name == "shop"

    def test_load_spec_missing(self, tmp_path: Path) -> None:
        """A source without knightwatch.toml is refused with a hint to create it."""
        with pytest.raises(SpecError) as info:
            load_spec(tmp_path)
        assert "no release spec here" in str(info.value)
        assert info.value.hint is not None and "knightwatch.toml" in info.value.hint


class TestValidSpec:
    """A valid spec parses, fills defaults and round-trips through JSON."""

    def test_example_parses(self) -> None:
        """The example spec in examples/smars parses with every table populated."""
        spec = parse_spec(EXAMPLE_SPEC.read_text(), file=str(EXAMPLE_SPEC))
        assert spec.release.name == "smars"
        assert [c.name for c in spec.component] == ["core", "router", "config"]
        assert spec.service is not None and spec.service.health is not None
        assert [f.name for f in spec.flag] == ["rlp.enabled", "smars.halt"]
        assert spec.guard[0].action == "halt_fleet"

    def test_example_round_trips(self, tmp_path: Path) -> None:
        """to_json gives plain JSON that validates back to an equal spec."""
        spec = load_spec(EXAMPLE_SPEC.parent)
        data = spec.to_json()
        again = ReleaseSpec.model_validate(json.loads(json.dumps(data)))
        assert again == spec
        assert again.to_json() == data

    def test_defaults_filled(self) -> None:
        """to_json fills in every default so the manifest records the effective spec."""
        data = parse_spec(BASE).to_json()
        assert data["release"]["allow_symlinks"] is False
        assert data["release"]["max_file_size"] == 1024**3
        assert data["release"]["exclude"] == []
        assert data["component"][0]["depends_on"] == []
        assert data["service"] is None

    def test_integer_seconds_accepted(self) -> None:
        """A whole number where seconds are expected (``grace_s = 5``) is accepted."""
        spec = parse_spec(BASE + SERVICE + "halt = { grace_s = 5 }\n")
        assert spec.service is not None and spec.service.halt.grace_s == 5
