"""How long a Ray actor takes to answer its first call, by runtime env.

Ray Train creates Ray Data's split coordinator (an actor) at the shard request
(``get_dataset_shard``), with the env_vars runtime env Train gives all its actors; this
measures what that costs on the embedded Ray, against an actor without a runtime env.

    .venv/bin/python benchmarks/actor_start.py

Results: RESULTS.md, "Time to first batch".
"""

from __future__ import annotations

import os
import statistics
import time

import ray

from pipeline.cluster import RAY_NODE_ENV, train_runtime_env


@ray.remote(num_cpus=0)
class Probe:
    def pid(self) -> int:
        return os.getpid()


def first_calls(n: int, runtime_env: dict | None) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        actor = Probe.options(runtime_env=runtime_env).remote() if runtime_env else Probe.remote()
        ray.get(actor.pid.remote())
        out.append(time.perf_counter() - start)
        ray.kill(actor)
    return out


def main() -> None:
    os.environ.update(RAY_NODE_ENV)
    if not train_runtime_env():
        raise SystemExit("Ray Train's runtime env could not be derived (its internals moved)")
    cases = (
        ("no runtime env (job and actor)", None, None),
        ("Train's runtime env on the actor", None, train_runtime_env()),
        ("Train's runtime env on the job, inherited", train_runtime_env(), None),
    )
    for name, job_env, actor_env in cases:
        ray.init(address="local", num_cpus=2, runtime_env=job_env, include_dashboard=False)
        time.sleep(5)  # let the raylet prestart its workers
        times = first_calls(4, actor_env)
        ray.shutdown()
        print(
            f"{name}: first {times[0]:.2f}s, then median {statistics.median(times[1:]):.2f}s "
            f"({', '.join(f'{t:.2f}' for t in times)})",
            flush=True,
        )


if __name__ == "__main__":
    main()
