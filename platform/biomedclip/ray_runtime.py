"""How a job gets its Ray: the cluster it was submitted to, else a local one sized for the job.

Only the jobs' command line (`biomedclip.cli`) calls this; the library itself never starts Ray.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable

import ray
from ray.data import DataContext

START_ATTEMPTS = 3


def connect_or_start(local_cpus: Callable[[int], int], num_cpus: int | None = None, address: str | None = None,
                     verbose: bool = False) -> None:
    """Joins `address` or RAY_ADDRESS (a cluster, or a job under `ray job submit`), else starts a local Ray with
    `num_cpus` logical CPUs or, by default, `local_cpus(machine_cpus)`: jobs ask for more than a 2-core laptop has,
    since Ray Data waits forever for a CPU that the training workers hold.

    Unless `verbose`, the workers' output and Ray's own logs stay in Ray's session log folder (printed once, for a
    local Ray) and Ray Data shows no progress bars of its own: the job shows one bar per stage."""
    quiet_ray(verbose)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=verbose)
        return
    cpus = num_cpus or local_cpus(os.cpu_count() or 1)
    context = _start_local(cpus, verbose)
    print(f"started a local Ray with {cpus} logical CPUs; its logs: {context.address_info['session_dir']}/logs",
          flush=True)


def _start_local(cpus: int, verbose: bool, attempts: int = START_ATTEMPTS):
    """A busy machine can miss Ray's node start-up deadline (or lose a raylet to a port race); a new start succeeds."""
    for attempt in range(1, attempts + 1):
        try:
            return ray.init(num_cpus=cpus, log_to_driver=verbose)
        except Exception as err:  # noqa: BLE001 - any start-up failure; the last one is raised
            ray.shutdown()
            if attempt == attempts:
                raise
            print(f"Ray did not start ({err}); starting it again", flush=True)


def quiet_ray(verbose: bool) -> None:
    """Unless `verbose`: Ray's INFO lines and Python warnings off the terminal, and no Ray Data bars or execution
    banners. Ray Data still writes its full log to ray-data.log in the session's log folder."""
    context = DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
    context.verbose_stats_logs = False
    if verbose:
        return
    # After `import ray`, whose own filter would otherwise print each deprecation notice about its internals once.
    warnings.filterwarnings("ignore", module="ray")
    for name in [name for name in logging.root.manager.loggerDict if name.split(".")[0] == "ray"]:
        if not name.startswith("ray.data"):  # Ray Data keeps DEBUG for its log file; its console is set below
            logging.getLogger(name).setLevel(logging.WARNING)
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ != "SessionFileHandler":  # the console, not the log file
            handler.setLevel(logging.ERROR)
