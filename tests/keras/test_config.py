"""Config keys of the keras path: validated, and refused where they would silently do nothing."""

import subprocess
import sys

import pytest

from kiln.config import iter_keys, load_config
from kiln.errors import ConfigError

pytestmark = pytest.mark.keras


def test_framework_keras_is_accepted_with_its_keys() -> None:
    cfg = load_config(overrides=["framework=keras", "keras.strategy=default",
                                 "keras.jit_compile=true"])
    assert cfg.framework == "keras" and cfg.keras.jit_compile


@pytest.mark.parametrize(("overrides", "message"), [
    (["keras.strategy=mirrored"], "keras.strategy: used only with framework=keras"),
    (["keras.jit_compile=true"], "keras.jit_compile: used only with framework=keras"),
    (["framework=keras", "data.num_workers=2"], "data.num_workers: used only with framework=torch"),
    (["framework=keras", "data.bucket_by_length=true"], "data.bucket_by_length: used only with"),
    (["framework=keras", "train.max_bad_steps=0"], "train.max_bad_steps: used only with"),
    (["framework=keras", "keras.strategy=everywhere"], "keras.strategy: Input should be"),
    (["framework=jax"], "framework: Input should be 'torch' or 'keras'"),
])
def test_keys_of_the_other_framework_are_errors_naming_the_key(overrides: list[str],
                                                               message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(overrides=overrides)


def test_help_documents_the_keras_keys() -> None:
    keys = {key: description for key, _, _, description in iter_keys()}
    assert "keras.strategy" in keys and "MirroredStrategy" in keys["keras.strategy"]
    assert "keras.jit_compile" in keys and "keras" in keys["framework"]


# Whether TensorFlow is installed or not: an import of it (or of keras) raises, naming the module.
NO_TENSORFLOW = """
import importlib.abc, importlib.machinery, sys

class Refuse(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("tensorflow", "keras", "tf2onnx"):
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError("imported " + module.__name__)

sys.meta_path.insert(0, Refuse())
"""


def test_torch_path_never_imports_tensorflow() -> None:
    code = NO_TENSORFLOW + (
        "import kiln, kiln.cli, kiln.train, kiln.train.loop, kiln.export, kiln.export.pipeline, "
        "kiln.runtime, kiln.serve, kiln.bench, kiln.keras, kiln.evaluate, kiln.run\n"
        "from kiln.cli import build_parser; build_parser()\n"
        "assert not [m for m in sys.modules if m.partition('.')[0] in ('tensorflow', 'keras')]")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_tensorflow_guard_catches_an_import() -> None:
    done = subprocess.run([sys.executable, "-c", NO_TENSORFLOW + "import kiln.keras.train"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "imported " in done.stderr


def test_framework_keras_without_the_extra_says_how_to_install_it(tmp_path) -> None:
    # a None entry in sys.modules is how Python spells "this package is not installed"
    code = ("import sys; sys.modules['tensorflow'] = None; from kiln.cli import main; "
            f"sys.exit(main(['train', 'framework=keras', 'run_dir={tmp_path / 'run'}']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "framework=keras needs TensorFlow and Keras: pip install 'kiln[keras]'" in done.stderr
    assert "Traceback" not in done.stderr
