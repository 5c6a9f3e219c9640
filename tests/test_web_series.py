"""web/chart_series.js (the live chart's data) run in Node.js: merging, smoothing, rate/ETA, saved size.
Skipped without a `node` binary; the browser tests (tests/browser) cover the same code in chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

SERIES = Path(__file__).resolve().parents[1] / "web" / "chart_series.js"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node.js (`node`) to run the web module")


def run_js(body: str):
    script = f"import {{ RunSeries }} from {json.dumps(SERIES.as_uri())};\nconst out = (() => {{ {body} }})();\n" \
             "console.log(JSON.stringify(out));"
    result = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_points_arrive_in_batches_overlap_and_out_of_order():
    out = run_js("""
        const s = new RunSeries('p', 10);
        const pt = (i) => [i, 1 / i, 1e-4 * i, i === 5 ? 0.3 : null, i];
        const added = [s.add([1, 2, 3].map(pt)), s.add([3, 4, 5].map(pt)), s.add([9, 10].map(pt)), s.add([6, 7, 8].map(pt))];
        return {added, steps: s.step, val: s.val, loss: s.loss};
    """)
    assert out["added"] == [3, 2, 2, 3]
    assert out["steps"] == list(range(1, 11)) and out["val"] == [[5, 0.3]]
    assert out["loss"] == pytest.approx([1 / i for i in range(1, 11)])


def test_smoothed_loss_is_a_debiased_ema():
    out = run_js("""
        const s = new RunSeries('p', 100);
        s.add([[1, 2.0, 0, null, 0], [2, 4.0, 0, null, 1]]);
        return {smooth: s.smooth, alpha: s.alpha};
    """)
    a = out["alpha"]
    assert out["smooth"][0] == pytest.approx(2.0)  # not pulled towards zero at the start
    assert out["smooth"][1] == pytest.approx((2.0 * (1 - a) * a + 4.0 * a) / ((1 - a) * a + a))


def test_rate_and_eta_come_from_server_time():
    out = run_js("""
        const s = new RunSeries('p', 100);
        s.add(Array.from({length: 20}, (_, i) => [i + 1, 0.1, 1e-4, null, 10 + i * 0.5]));
        return {rate: s.rate(), eta: s.eta()};
    """)
    assert out["rate"] == pytest.approx(2.0) and out["eta"] == pytest.approx(40.0)


def test_saved_run_is_small_keeps_the_last_point_and_validation_and_round_trips():
    out = run_js("""
        const s = new RunSeries('p', 100000);
        s.add(Array.from({length: 100000}, (_, i) => [i + 1, 1 / (i + 1), 1e-4, (i + 1) % 25000 === 0 ? 0.5 : null, i * 0.01]));
        const saved = JSON.parse(JSON.stringify(s.toJSON()));
        const back = RunSeries.fromJSON(saved);
        return {n: saved.points.length, size: JSON.stringify(saved).length, last: saved.points.at(-1),
                val: back.val, total: back.total, prompt: back.promptId, lastStep: back.lastStep};
    """)
    assert out["n"] <= 1010 and out["size"] < 60_000
    assert out["last"][0] == 100000 and out["last"][1] == pytest.approx(1e-5)
    assert out["val"] == [[25000, 0.5], [50000, 0.5], [75000, 0.5], [100000, 0.5]]
    assert (out["total"], out["prompt"], out["lastStep"]) == (100000, "p", 100000)


def test_two_expert_runs_smooth_each_expert_on_its_own_and_keep_the_expert_when_saved():
    out = run_js("""
        const s = new RunSeries('p', 100);
        s.add([[1, 1.0, 0, null, 0, 'high_noise'], [2, 9.0, 0, null, 1, 'low_noise'],
               [3, 1.0, 0, null, 2, 'high_noise'], [4, 9.0, 0, null, 3, 'low_noise']]);
        const back = RunSeries.fromJSON(JSON.parse(JSON.stringify(s.toJSON())));
        const one = new RunSeries('q', 10);
        one.add([[1, 1.0, 0, null, 0], [2, 9.0, 0, null, 1]]);
        return {smooth: s.smooth, experts: s.experts, last: s.lastSmoothByExpert(), back: back.points(),
                one: one.points(), oneExperts: one.experts, oneSmooth: one.smooth};
    """)
    assert out["smooth"] == pytest.approx([1.0, 9.0, 1.0, 9.0])  # never averaged across experts
    assert out["experts"] == ["high_noise", "low_noise"] and out["last"] == {"high_noise": 1.0, "low_noise": 9.0}
    assert [p[5] for p in out["back"]] == ["high_noise", "low_noise", "high_noise", "low_noise"]
    assert out["one"] == [[1, 1.0, 0, None, 0], [2, 9.0, 0, None, 1]] and out["oneExperts"] == []
    assert out["oneSmooth"][1] not in (1.0, 9.0)  # one model: one curve, as before
