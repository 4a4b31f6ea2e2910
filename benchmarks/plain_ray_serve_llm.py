"""Baseline B of the benchmark: plain `ray.serve.llm.build_openai_app`, no gateway of ours.

Usage: python benchmarks/plain_ray_serve_llm.py MODEL_PATH PORT [STREAM_BATCHING_MS]
The environment decides Ray Serve's mode (the benchmark runs it with and without the fast path);
STREAM_BATCHING_MS (default: Ray Serve LLM's own) sets experimental_configs.stream_batching_interval_ms,
0 for the tuned baseline.
"""

import signal
import sys
import time

if __name__ == "__main__":
    model_path, port = sys.argv[1], int(sys.argv[2])
    tuning = {"experimental_configs": {"stream_batching_interval_ms": int(sys.argv[3])}} if len(sys.argv) > 3 else {}
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    ray.init(address="local", num_cpus=8)
    # As llm-serving's CLI does, after ray.init (which installs its own SIGTERM handler): without
    # this, the benchmark's SIGINT left the vLLM engine process running (orphaned, busy) and
    # skewed the servers measured after it.
    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    llm_config = LLMConfig(
        model_loading_config={"model_id": "tiny-chat", "model_source": model_path},
        accelerator_config={"kind": "cpu"},
        placement_group_config={"bundles": [{"CPU": 1}]},
        engine_kwargs={"enforce_eager": True, "dtype": "float32", "max_model_len": 512},
        deployment_config={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
        **tuning,
    )
    serve.run(build_openai_app({"llm_configs": [llm_config]}), name="plain", route_prefix="/")
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
        ray.shutdown()
