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


@pytest.fixture(scope="session")
def generic_dir(tmp_path_factory):
    return testing.save_generic_mlm(str(tmp_path_factory.mktemp("generic")))


@pytest.fixture(scope="session")
def llada_dir(tmp_path_factory):
    return testing.save_llada(str(tmp_path_factory.mktemp("llada")))


@pytest.fixture(scope="session")
def dream_dir(tmp_path_factory):
    return testing.save_dream(str(tmp_path_factory.mktemp("dream")))


@pytest.fixture(scope="session")
def sdar_dir(tmp_path_factory):
    return testing.save_sdar(str(tmp_path_factory.mktemp("sdar")))


@pytest.fixture(scope="session")
def llada2_dir(tmp_path_factory):
    return testing.save_llada2(str(tmp_path_factory.mktemp("llada2")))


@pytest.fixture(scope="session")
def llada21_dir(tmp_path_factory):
    return testing.save_llada2(str(tmp_path_factory.mktemp("llada21")), model_type="llada21_moe")


@pytest.fixture(scope="session")
def lladamoe_dir(tmp_path_factory):
    return testing.save_lladamoe(str(tmp_path_factory.mktemp("lladamoe")))


@pytest.fixture(scope="session")
def remote_mlm_dir(tmp_path_factory):
    return testing.save_remote_mlm(str(tmp_path_factory.mktemp("remote_mlm")))
