"""Shared fixtures: tiny offline models of every family, saved once per session to a temp dir."""

import pytest

from trl_t3d import testing


@pytest.fixture(scope="session")
def tokenizer():
    return testing.make_tokenizer()


@pytest.fixture(scope="session")
def generic_dir(tmp_path_factory):
    return testing.save_generic_mlm(str(tmp_path_factory.mktemp("generic")))


@pytest.fixture(scope="session")
def llada_dir(tmp_path_factory):
    return testing.save_llada_like(str(tmp_path_factory.mktemp("llada")))


@pytest.fixture(scope="session")
def dream_dir(tmp_path_factory):
    return testing.save_dream_like(str(tmp_path_factory.mktemp("dream")))


@pytest.fixture(scope="session")
def sdar_dir(tmp_path_factory):
    return testing.save_sdar_like(str(tmp_path_factory.mktemp("sdar")))


@pytest.fixture(scope="session")
def llada2_dir(tmp_path_factory):
    return testing.save_llada2_like(str(tmp_path_factory.mktemp("llada2")))
