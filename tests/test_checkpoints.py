"""Checkpointer: bit-exact round trip, retention, template mismatch errors, interrupted / corrupt steps."""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from metarl_jax.algos.grpo import TrainState, init_train_state
from metarl_jax.algos.optim import guard_non_finite
from metarl_jax.checkpoints import Checkpointer, CheckpointMismatchError, UnfinishedSaveWarning
from metarl_jax.models import Transformer, preset

CONFIG = {"model": {"preset": "tiny"}, "lr": 1e-3, "envs": ["bandit", "maze"], "seed": 0}


def _state(vocab=50, seed=0):
    _, params = nnx.split(Transformer(preset("tiny", vocab), rngs=nnx.Rngs(seed)))
    return init_train_state(params, optax.adam(1e-3))


@pytest.fixture(scope="module")
def trained():
    """A train state whose opt_state and step are not at their initial values, plus a key."""
    state = _state()
    opt = guard_non_finite(optax.adam(1e-3))  # the train state's optimizer state is the guard's
    grads = jax.tree.map(jnp.ones_like, state.params)
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    state = TrainState(params=optax.apply_updates(state.params, updates), opt_state=opt_state, step=state.step + 7)
    return state, jax.random.PRNGKey(42)


def _assert_trees_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_bit_exact(tmp_path, trained):
    state, key = trained
    host_copy = jax.tree.map(np.array, (state, key))
    with Checkpointer(tmp_path / "ck", async_save=True) as ckpt:
        assert ckpt.directory == os.path.abspath(tmp_path / "ck")
        assert ckpt.latest_step() is None
        assert ckpt.restore_latest(_state(seed=1), jax.random.PRNGKey(0)) is None
        assert ckpt.save(7, state, key, CONFIG)
        # async save copies to host before returning: donating/deleting the arrays afterwards is safe
        (state_del, key_del) = jax.tree.map(jnp.copy, (state, key))
        ckpt.save(8, state_del, key_del, CONFIG)
        jax.tree.map(lambda x: x.delete(), (state_del, key_del))
        ckpt.wait()
        assert ckpt.latest_step() == 8
    ckpt = Checkpointer(tmp_path / "ck")  # fresh manager, as after a restart
    for step in (7, 8):
        new_state, new_key, config = ckpt.restore(step, _state(seed=1), jax.random.PRNGKey(0))
        assert isinstance(new_state, TrainState)
        _assert_trees_equal((new_state, new_key), host_copy)
        assert config == CONFIG
    new_state, new_key, config, step = ckpt.restore_latest(_state(seed=1), jax.random.PRNGKey(0))
    assert step == 8 and config == CONFIG
    _assert_trees_equal((new_state, new_key), host_copy)
    ckpt.close()


def test_typed_key_round_trip(tmp_path, trained):
    state, _ = trained
    key = jax.random.key(3)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state, key, CONFIG)
        _, new_key, _ = ckpt.restore(1, state, jax.random.key(0))
    assert jax.dtypes.issubdtype(new_key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(new_key), jax.random.key_data(key))


def test_keeps_max_to_keep(tmp_path, trained):
    state, key = trained
    with Checkpointer(tmp_path, max_to_keep=2, async_save=True) as ckpt:
        for step in range(1, 5):
            assert ckpt.save(step, state, key, {**CONFIG, "step": step})
        ckpt.wait()
        assert ckpt.all_steps() == [3, 4]
        assert not ckpt.save(4, state, key, CONFIG)  # orbax skips steps <= the latest
        assert ckpt.restore(3, state, key)[2]["step"] == 3
    assert sorted(os.listdir(tmp_path)) == ["3", "4"]


def test_shape_mismatch_names_leaf(tmp_path, trained):
    state, key = trained
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(7, state, key, CONFIG)
        with pytest.raises(CheckpointMismatchError, match=r"(?s)embed/value.*\(50, 64\).*\(60, 64\).*fresh workdir"):
            ckpt.restore(7, _state(vocab=60), key)
        with pytest.raises(ValueError, match="train_state/params/embed/value"):
            ckpt.restore_latest(_state(vocab=60), key)  # a mismatch is raised, not skipped
        smaller = state.replace(params=nnx.State({k: v for k, v in state.params.items() if k != "norm"}))
        with pytest.raises(CheckpointMismatchError, match=r"saved leaf 'train_state/params/norm/weight/value'"):
            ckpt.restore(7, smaller, key)
        assert ckpt.all_steps() == [7]


# after a failed tensorstore read, reads still in flight may call back into orbax's closed asyncio loop
# ("RuntimeError: Event loop is closed", reported by pytest as unraisable): harmless, timing dependent
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_interrupted_and_corrupt_steps_fall_back(tmp_path, trained):
    state, key = trained
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state, key, {**CONFIG, "step": 1})
        ckpt.save(2, state, key, {**CONFIG, "step": 2})
    # a save killed mid-write: orbax's temporary directory is never listed
    (tmp_path / "3.orbax-checkpoint-tmp-1700000000").mkdir()
    (tmp_path / "3.orbax-checkpoint-tmp-1700000000" / "state").mkdir()
    # step 2 is listed but its array data is truncated (e.g. disk filled up)
    for root, _, files in os.walk(tmp_path / "2" / "state"):
        for f in files:
            if "ocdbt" in root or f.endswith("ocdbt"):
                open(os.path.join(root, f), "wb").close()
    # a step directory copied non-atomically (e.g. rsync killed): listed by orbax on local disk, but empty
    (tmp_path / "4" / "state").mkdir(parents=True)
    with pytest.warns(UnfinishedSaveWarning, match=r"deleting unfinished checkpoint save\(s\) "
                                                  r"\['3\.orbax-checkpoint-tmp-1700000000'\]"):
        ckpt = Checkpointer(tmp_path, async_save=False, clean_unfinished=True)
    assert ckpt.latest_step() == 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        new_state, new_key, config, step = ckpt.restore_latest(_state(seed=1), jax.random.PRNGKey(0))
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 2 and "step 4 " in messages[0] and "step 2 " in messages[1], messages
    assert all("unreadable" in m for m in messages)
    assert step == 1 and config["step"] == 1
    _assert_trees_equal((new_state, new_key), (state, key))
    assert ckpt.latest_step() == 1 and (tmp_path / "2.unreadable").is_dir() and (tmp_path / "4.unreadable").is_dir()
    assert ckpt.save(2, new_state, new_key, CONFIG)  # the resumed run can write step 2 again
    ckpt.close()
    assert not (tmp_path / "3.orbax-checkpoint-tmp-1700000000").exists()  # orbax deleted it before the save


def test_no_readable_step_raises(tmp_path, trained):
    state, key = trained
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state, key, CONFIG)
    os.remove(tmp_path / "1" / "state" / "_METADATA")
    with warnings.catch_warnings(record=True), pytest.raises(RuntimeError, match="no readable checkpoint"):
        Checkpointer(tmp_path).restore_latest(state, key)
    # The unreadable step was set aside; a second attempt must not read as "no checkpoint, start over".
    with pytest.raises(RuntimeError, match=r"unreadable steps set aside: \['1\.unreadable'\]\); starting over would "
                                           r"silently drop the run's progress"):
        Checkpointer(tmp_path).restore_latest(state, key)


def test_workdir_lock_is_exclusive_and_released_when_its_holder_dies(tmp_path):
    import signal
    import subprocess
    import sys

    from metarl_jax.workdir import WorkdirBusyError, workdir_lock

    with workdir_lock(str(tmp_path)):
        with pytest.raises(WorkdirBusyError, match=rf"{tmp_path} is in use by process {os.getpid()} on "):
            with workdir_lock(str(tmp_path)):
                pass
    with workdir_lock(str(tmp_path)):  # released at the end of the block
        pass
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from metarl_jax.workdir import workdir_lock\n"
        f"with workdir_lock({str(tmp_path)!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirBusyError, match=f"process {holder.pid} "):
            with workdir_lock(str(tmp_path)):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    with workdir_lock(str(tmp_path)):  # the killed holder's lock went with it
        pass


def _step_files(step_dir) -> list[str]:
    return sorted(os.path.join(root, f) for root, _, files in os.walk(step_dir) for f in files)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_fifty_random_byte_flips_are_all_detected_and_the_run_falls_back(tmp_path, trained):
    """Property: one byte flipped anywhere in the newest step (any of its files, the checksum manifest included)
    is detected at restore; the step is set aside with a warning and the previous step is restored intact."""
    import random
    import shutil

    from metarl_jax.checksums import MANIFEST

    state, key = trained
    pristine = tmp_path / "pristine"
    with Checkpointer(pristine, async_save=True) as ckpt:  # the training loop's mode: sealed by orbax's callback
        ckpt.save(1, state, key, {**CONFIG, "step": 1})
        ckpt.save(2, state, key, {**CONFIG, "step": 2})
    files = _step_files(pristine / "2")
    assert os.path.join(pristine, "2", MANIFEST) in files and len(files) > 5
    rng = random.Random(0)
    for trial in range(50):
        directory = tmp_path / f"trial{trial}"
        shutil.copytree(pristine, directory)
        target = rng.choice(_step_files(directory / "2"))
        data = bytearray(open(target, "rb").read())
        if not data:
            continue
        at = rng.randrange(len(data))
        data[at] ^= rng.randrange(1, 256)
        open(target, "wb").write(bytes(data))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            restored, restored_key, config, step = Checkpointer(directory).restore_latest(_state(seed=1),
                                                                                          jax.random.PRNGKey(0))
        where = f"trial {trial}: byte {at} of {os.path.relpath(target, directory)}"
        assert step == 1 and config["step"] == 1, where
        assert any("checkpoint step 2" in str(w.message) and "unreadable" in str(w.message) for w in caught), where
        assert (directory / "2.unreadable").is_dir(), where
        _assert_trees_equal((restored, restored_key), (state, key))
        shutil.rmtree(directory)


def test_a_step_under_another_number_is_refused(tmp_path, trained):
    from metarl_jax.checksums import CorruptCheckpointError

    state, key = trained
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state, key, CONFIG)
        ckpt.save(2, state, key, CONFIG)
    os.rename(tmp_path / "2", tmp_path / "5")
    with pytest.raises(CorruptCheckpointError, match="holds checkpoint step 2, not step 5"):
        Checkpointer(tmp_path).restore(5, state, key)


def test_a_step_without_its_manifest_restores_with_a_warning(tmp_path, trained):
    from metarl_jax.checksums import MANIFEST, UnverifiedCheckpointWarning

    state, key = trained
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state, key, CONFIG)
    os.remove(tmp_path / "1" / MANIFEST)
    with pytest.warns(UnverifiedCheckpointWarning, match="has no checksums.json"):
        restored = Checkpointer(tmp_path).restore_latest(state, key)
    assert restored[3] == 1
