"""A leaderboard must build on a laptop without a cluster: the results layer never imports Ray or torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_results_layer_imports_and_builds_without_ray_or_torch(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        import dia_ray.results, dia_ray.results.records, dia_ray.results.collect, dia_ray.results.paper
        import dia_ray.results.stats, dia_ray.results.leaderboard, dia_ray.results.plots, dia_ray.results.page
        import dia_ray.results.files, dia_ray.results.report
        from dia_ray.results.collect import collect
        from dia_ray.results.leaderboard import build, to_markdown
        from dia_ray.results.records import ResultRecord, write_records
        rec = ResultRecord(dataset="kvasir", method="dia", seed=0, config_hash="h", auroc_last=0.8,
                           auroc_best_test=0.8, best_epoch=1, epochs=1, test_scores=[0.1, 0.9], test_labels=[0, 1])
        write_records({str(tmp_path)!r} + "/r.jsonl", [rec])
        to_markdown(build(collect({str(tmp_path)!r})))
        from dia_ray.results.report import publish
        publish({str(tmp_path)!r}, formats=["html", "latex"])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "torch"))
        print(",".join(heavy))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"the results layer imported: {done.stdout.strip()}"
