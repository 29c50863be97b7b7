"""The training dashboard's LoRA panels (monitoring/dashboards/training.json), evaluated by the real
Prometheus engine (``promtool test rules``, ``promql_expr_test``) on the series the LoRA run pushes
(llm/finetune.py ``push_metrics``: Pushgateway group ``{job="mlplatform-training-lora", model}``,
scraped with honor_labels): each panel shows one line per adapter, the run's latest value."""

from __future__ import annotations

import json

from llm import finetune
from monitoring import spec
from tests import promql

PANELS = {  # panel title -> the metric it must show
    "LoRA training loss (last logged step)": finetune.LOSS_METRIC,
    "LoRA throughput (tokens/s)": finetune.TOKENS_METRIC,
    "LoRA steps completed": finetune.STEPS_METRIC,
}


def lora_panels() -> dict[str, str]:
    panels = json.loads(spec.dashboards()["training"])["panels"]
    return {p["title"]: p["targets"][0]["expr"] for p in panels if p["title"] in PANELS}


def series(metric: str, model: str, values: str) -> dict:
    labels = f'job="{finetune.PUSH_JOB}", model="{model}", instance="pushgateway:9091", pod="pushgateway-0"'
    return {"series": f"{metric}{{{labels}}}", "values": values}


def test_every_lora_metric_has_a_panel():
    assert set(lora_panels()) == set(PANELS)
    for title, expr in lora_panels().items():
        assert PANELS[title] in expr, (title, expr)


def test_the_lora_panels_show_each_adapters_latest_value(tmp_path):
    """Two adapters: ``support-bot`` pushed every minute (loss falling, steps rising), ``faq`` from a
    second Pushgateway replica too (the same group seen twice: one line, not two). What each panel
    shows at 3m is the last pushed value per adapter."""
    pushed = {
        finetune.LOSS_METRIC: ("5.3 5.1 4.9 4.8", "2.0 1.9 1.8 1.7"),
        finetune.TOKENS_METRIC: ("2200 2300 2350 2400", "900 910 920 930"),
        finetune.STEPS_METRIC: ("5 10 15 20", "100 120 140 160"),
    }
    expected = {finetune.LOSS_METRIC: (4.8, 1.7), finetune.TOKENS_METRIC: (2400, 930), finetune.STEPS_METRIC: (20, 160)}
    inputs, cases = [], []
    for title, expr in lora_panels().items():
        metric = PANELS[title]
        bot, faq = pushed[metric]
        inputs += [series(metric, "support-bot", bot), series(metric, "faq", faq)]
        replica = series(metric, "faq", faq)
        replica["series"] = replica["series"].replace("pushgateway-0", "pushgateway-1")
        inputs.append(replica)
        cases.append(
            {
                "expr": expr,
                "eval_time": "3m",
                "exp_samples": [
                    {"labels": '{model="faq"}', "value": expected[metric][1]},
                    {"labels": '{model="support-bot"}', "value": expected[metric][0]},
                ],
            }
        )
    proc = promql.run_tests(tmp_path, [{"interval": "1m", "input_series": inputs, "promql_expr_test": cases}], interval="1m")
    assert proc.returncode == 0, proc.stdout + proc.stderr
