"""Shared fixtures: tiny offline models of every family, saved once per session to a temp dir."""

import atexit
import os
import shutil
import tempfile

# Every Hugging Face cache the suite writes (remote code modules, datasets, hub files) lives in a temp dir of this
# session, set before transformers / datasets are imported; subprocesses (`accelerate launch`) inherit it. Two runs on
# one machine then never share `~/.cache/huggingface`.
_HF_HOME = tempfile.mkdtemp(prefix="trl_t3d_tests_hf_")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
for _variable, _folder in (
    ("HF_HOME", ""),
    ("HF_MODULES_CACHE", "modules"),
    ("HF_DATASETS_CACHE", "datasets"),
    ("HF_HUB_CACHE", "hub"),
    ("HF_XET_CACHE", "xet"),
    ("TRITON_CACHE_DIR", "triton"),
):
    os.environ[_variable] = os.path.join(_HF_HOME, _folder)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# The models here are tiny: one thread per process is several times faster than two fighting over a 2-core machine,
# and subprocesses (accelerate launch, the demo) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from trl_t3d import testing  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return testing.make_tokenizer()


def _saved_model(name: str, save, **kwargs):
    """A session fixture `<name>_dir`: the directory `save(<a fresh temp dir>, **kwargs)` wrote, made once."""

    @pytest.fixture(scope="session", name=f"{name}_dir")
    def fixture(tmp_path_factory):
        return save(str(tmp_path_factory.mktemp(name)), **kwargs)

    return fixture


generic_dir = _saved_model("generic", testing.save_generic_mlm)
llada_dir = _saved_model("llada", testing.save_llada)
dream_dir = _saved_model("dream", testing.save_dream)
sdar_dir = _saved_model("sdar", testing.save_sdar)
llada2_dir = _saved_model("llada2", testing.save_llada2)
llada21_dir = _saved_model("llada21", testing.save_llada2, model_type="llada21_moe")
lladamoe_dir = _saved_model("lladamoe", testing.save_lladamoe)
remote_mlm_dir = _saved_model("remote_mlm", testing.save_remote_mlm)


def pytest_collection_modifyitems(config, items):
    """Under `pytest -n 2 --dist loadgroup` the `accelerate launch` tests run one after another on one worker: two
    launches at once would bind the same rendezvous port and put four processes on two cores."""
    for item in items:
        if item.get_closest_marker("accelerate_launch"):
            item.add_marker(pytest.mark.xdist_group("accelerate_launch"))
