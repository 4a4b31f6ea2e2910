"""One profile, two runtimes: what the chart gives the Ray pods is what `llm-serving serve` gives
its local Ray, so a profile that works on a laptop behaves the same in a cluster."""

import pytest

from llm_serving.cli import FAST_PATH_ENVIRONMENT
from tests.charts.llm_serving_chart import cluster, env, ray_container
from tests.charts.render import profiles, render_chart

PROFILES = profiles("llm-serving")


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_every_ray_pod_gets_the_local_commands_fast_path_settings(profile):
    spec = cluster(render_chart("llm-serving", values_files=[profile]))
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for template in templates:
        pod_env = env(ray_container(template))
        assert {key: pod_env.get(key) for key in FAST_PATH_ENVIRONMENT} == FAST_PATH_ENVIRONMENT
