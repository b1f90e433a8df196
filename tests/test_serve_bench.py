"""bench.serve end to end on a tiny chat run: the chat timed in process and in the browser (the demo's Chat tab)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT
from demo_fixtures import llama_chat_run


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (scripts/setup.sh installs it)")
def test_serving_bench_times_the_chat_in_process_and_in_the_browser(tmp_path):
    run = llama_chat_run(tmp_path)
    out = tmp_path / "serving.json"
    # Its own process, as bench.run starts it (one Playwright per process).
    subprocess.run([sys.executable, "-m", "bench.serve", "--run", str(run), "--out", str(out)], check=True,
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    result = json.loads(out.read_text())
    web = result["browser"]
    assert "error" not in web, web
    single, many = web["one_user"]["requests"], web["concurrent"]["requests"]
    assert len(single) == 3 and len(many) == web["concurrent"]["users"] == 4
    for r in single + many:
        assert 0 < r["ttft_s"] <= r["total_s"] < 120
        assert 1 <= r["new_tokens"] <= result["max_new_tokens"]
    # Greedy decoding of the same model and message: the browser shows the answer the in-process path generated.
    in_process = {r["new_tokens"] for r in result["dtypes"]["float32"]["one_user"]["requests"]}
    assert {r["new_tokens"] for r in single + many} == in_process
    assert web["one_user"]["ttft_s"] == sorted(r["ttft_s"] for r in single)[1]  # the median of 3
