import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    marker = lines.index("<!-- test-command -->")
    command = lines[marker + 2]
    assert "python -m pytest" in command and "ruff check" in command
    extracted = subprocess.run(["awk", "/<!-- test-command -->/{getline; getline; print; exit}", "README.md"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert extracted == command
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


def test_readme_first_command_runs_the_main_job():
    text = (ROOT / "README.md").read_text()
    first = next(line for line in text.splitlines() if line.startswith("python -m venv"))
    assert first.endswith("firepe compare")
