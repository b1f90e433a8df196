"""Quality vs cost (eval.pareto): the Pareto front, and the figure in compare's reports."""

import pytest

from eval.compare import build_tables, collect_runs, compare_main
from eval.pareto import front_labels, pareto_front
from tests.test_compare import write_run


def test_front_keeps_only_undominated_points():
    costs, scores = [1.0, 2.0, 3.0, 2.5, 1.0], [0.5, 0.7, 0.9, 0.6, 0.4]
    # (2.5, 0.6) is beaten by (2.0, 0.7); (1.0, 0.4) by (1.0, 0.5) at equal cost
    assert pareto_front(costs, scores, greater_is_better=True) == [True, True, True, False, False]
    # lower is better (perplexity): now the cheapest low score wins, higher scores at more cost are dominated
    assert pareto_front(costs, scores, greater_is_better=False) == [False, False, False, False, True]
    assert pareto_front([1.0, 1.0], [0.5, 0.5], True) == [True, True]  # ties are both on the front


@pytest.fixture
def costly_runs(tmp_path):
    base = {"perplexity": 80.0}
    write_run(tmp_path, "cheap", scores={"perplexity": 40.0}, base_scores=base,
              train={"seconds": 10.0, "peak_memory_mb": 500.0}, params={"trainable": 1000, "total": 10**6})
    write_run(tmp_path, "best", scores={"perplexity": 30.0}, base_scores=base,
              train={"seconds": 100.0, "peak_memory_mb": 2000.0}, params={"trainable": 10**6, "total": 10**6})
    write_run(tmp_path, "wasteful", scores={"perplexity": 45.0}, base_scores=base,
              train={"seconds": 50.0, "peak_memory_mb": 400.0}, params={"trainable": 5000, "total": 10**6})
    return tmp_path


def test_front_per_cost_names_the_runs_worth_choosing(costly_runs):
    (table,) = build_tables(collect_runs([costly_runs])[0])
    fronts = front_labels(table)
    assert sorted(fronts["train_seconds"]) == ["best", "cheap"]  # wasteful: slower and worse than cheap
    assert sorted(fronts["peak_memory_mb"]) == ["best", "cheap", "wasteful"]  # wasteful uses the least memory
    assert sorted(fronts["trainable_params"]) == ["best", "cheap"]


def test_html_and_markdown_reports_carry_the_figure(costly_runs, tmp_path):
    page = compare_main([costly_runs], "html", tmp_path / "out" / "compare.html")
    assert page.count('class="chart pareto"') == 1 and "Pareto front marked" in page
    (figure,) = (tmp_path / "out" / "compare").glob("*-pareto.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    markdown = compare_main([costly_runs], "markdown", tmp_path / "out" / "compare.md")
    assert f"(compare/{figure.name})" in markdown
