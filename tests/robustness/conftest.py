"""Session fixtures of the robustness corpus: one tiny trained workdir (copied per case, never
changed), a log capture for the `wristmir` logger (it does not propagate to the root logger)."""

import logging
import os
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHALLOW = ["--config.model.image.depth=1", "--config.model.local.depth=1",
           "--config.model.text.depth=1"]


def tiny_cfg(*extra):
    from wristmir_jax.config import load_config

    return load_config(os.path.join(ROOT, "configs/tiny.py"),
                       SHALLOW + ["--config.mesh.data=2", "--config.train.eval_every=0",
                                  "--config.train.steps=4"] + list(extra))


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
    """(workdir, summary) of a 4-step tiny run with checkpoints 3 and 4 kept."""
    from wristmir_jax.train.trainer import train

    w = str(tmp_path_factory.mktemp("trained") / "w")
    summary = train(tiny_cfg(), w)
    return w, summary


@pytest.fixture
def workdir_copy(trained_workdir, tmp_path):
    src, summary = trained_workdir
    dst = str(tmp_path / "w")
    shutil.copytree(src, dst)
    return dst, summary


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def wristmir_log():
    """Messages logged under `wristmir.*` during the test."""
    from wristmir_jax.utils.log import get_logger

    get_logger()
    h = _Records()
    root = logging.getLogger("wristmir")
    root.addHandler(h)
    yield h.messages
    root.removeHandler(h)
