"""Workers that come back: an annotator actor killed mid-annotation is restarted and its
batches asked again, so the stage completes with every answer."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from maestro.feedback.annotation import AnnotationServiceConfig, annotate
from maestro.feedback.pairs import Question
from maestro.feedback.preferences import PreferenceStore
from maestro.llm import AnnotatorConfig, load_prompt_set
from maestro.store import LocalStore


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from maestro.runtime import init_ray
    from maestro.spec import ResourcesSpec

    init_ray(ResourcesSpec(num_cpus=2))
    yield
    ray.shutdown()


def annotator_pids() -> list[int]:
    """Processes of live annotator actors (Ray titles an actor's process `ray::<class>`)."""
    import psutil

    pids = []
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if command.startswith("ray::AnnotatorActor"):
            pids.append(process.pid)
    return pids


def test_a_killed_annotator_is_restarted_and_every_batch_answered(local_ray, tmp_path):
    questions = [
        Question(f"q{i:04d}", f"You see {i} gold pieces.", f"You hear {i} birds.")
        for i in range(1000)
    ]
    preferences = PreferenceStore(LocalStore(tmp_path), "preferences")
    service = AnnotationServiceConfig(batch_size=2, batches_per_actor=1, restarts=2)
    killed: list[int] = []

    def kill_one_mid_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(preferences.done_batches()) < 5:
            time.sleep(0.05)
        pids = annotator_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    killer = threading.Thread(target=kill_one_mid_run)
    killer.start()
    result = annotate(
        questions,
        load_prompt_set().task("score"),
        preferences,
        AnnotatorConfig(),
        service,
    )
    killer.join()
    assert killed, "the annotator finished before it could be killed"
    assert result.batches_done == 500 and result.pairs == 1000
    assert preferences.done_batches() == set(range(500))
    assert len(preferences.read()) == 1000
