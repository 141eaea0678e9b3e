"""A two-job code location for the run-monitoring test (tests/integration/test_emergency_daemon.py):
``sleepy_job`` holds the local instance's single run lane until it is killed, ``quick_job`` waits
behind it in the queue. Nothing heavy is imported, so a run worker starts in a second or two."""

import time

import dagster as dg


@dg.op
def sleep_long() -> None:
    time.sleep(600)


@dg.op
def say_done() -> str:
    return "done"


@dg.job
def sleepy_job():
    sleep_long()


@dg.job
def quick_job():
    say_done()


defs = dg.Definitions(jobs=[sleepy_job, quick_job])
