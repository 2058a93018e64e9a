"""The README's quick-start runs as written (with fewer steps) and the README has two set-up commands.

The docs pages' Python blocks (the LIS, serving and mesh examples that the README once held) run
in tests/test_docs_examples.py."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def python_blocks():
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_one_python_block_the_quick_start():
    assert len(python_blocks()) == 1


def test_quick_start_trains_inside_a_user_loop(capsys):
    (code,) = [block for block in python_blocks() if "train_step" in block]
    assert "zip(range(200), batches)" in code
    exec(compile(code.replace("range(200)", "range(3)"), "README quick-start", "exec"), {})
    assert re.search(r"step 2: loss \d+\.\d+", capsys.readouterr().out)


def test_exactly_two_setup_commands():
    setup = (ROOT / "README.md").read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, re.S)
    assert len(commands) == 2
    assert "genrank-jax train" in commands[0] and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install --quiet -e '.[test]'" in ci and "pytest" in ci


def test_readme_is_a_front_door_whose_links_resolve():
    """Under 200 lines; the rest is in docs/ (built by mkdocs, whose strict build checks the site's
    own links). Every relative link of the README names a file that exists, and every guide is linked."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local and all((ROOT / link).is_file() for link in local), [
        link for link in local if not (ROOT / link).is_file()]
    guides = {str(page.relative_to(ROOT)) for page in (ROOT / "docs" / "guides").glob("*.md")}
    assert guides <= set(local), guides - set(local)


def test_docs_home_shows_the_readme_set_up_commands_as_they_are():
    def setup(path):
        return re.findall(r"```bash\n(.*?)```", path.read_text().split("## Set up", 1)[1].split("\n## ", 1)[0], re.S)
    assert setup(ROOT / "docs" / "index.md") == setup(ROOT / "README.md")
