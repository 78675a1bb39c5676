"""Each config dataclass checks its values when it is made, with settings.py's one checker and message, so a
notebook hears of a bad value at the line that gives it, named as Python knows it."""
from __future__ import annotations

import pytest

from featpipe.classify import FitConfig, HeadSettings
from featpipe.extraction import ExtractConfig
from featpipe.extraction.devices import parse_devices, resolve_device
from featpipe.finetune import FinetuneConfig
from featpipe.settings import FINETUNE, PREDICT, SettingError


@pytest.mark.parametrize("make, message", [
    (lambda: ExtractConfig("images", "f.h5", batch_size=0), "ExtractConfig.batch_size must be at least 1 or auto, got 0"),
    (lambda: ExtractConfig("images", "f.h5", devices="all", scheduler="tcp://x:1"),
     "ExtractConfig.devices runs local workers, one per GPU; with ExtractConfig.scheduler start one `dask worker` per "
     "GPU instead (CUDA_VISIBLE_DEVICES=N) and leave out ExtractConfig.devices"),
    (lambda: FitConfig("f.h5", "m.skops", test_size=1.5),
     "FitConfig.test_size must be greater than 0 and less than 1, got 1.5"),
    (lambda: FitConfig("f.h5", "m.skops", ("logreg",), head={"lr": 0.1}),
     "FitConfig.classifiers 'logreg' has no linear or mlp head for the heads' settings (lr) to train; add linear "
     "or mlp, or drop those settings"),
    (lambda: HeadSettings(epochs=0), "HeadSettings.epochs must be at least 1, got 0"),
    (lambda: FinetuneConfig("images", "ft.pt", model="m", epochs="many"),
     "FinetuneConfig.epochs must be auto or a whole number, got 'many'"),
    (lambda: FinetuneConfig("images", "ft.pt", model="m", val_size=1.0),
     "FinetuneConfig.val_size must be a fraction from 0 (no validation: keep the last epoch) to below 1, got 1.0"),
])
def test_a_bad_value_is_refused_where_the_config_is_made(make, message):
    with pytest.raises(SettingError) as caught:
        make()
    assert str(caught.value) == message


def test_what_a_notebook_gives_is_made_typed():
    config = FitConfig("f.h5", "m.skops", ("linear",), head={"lr": 0.1})
    assert config.head == HeadSettings(lr=0.1) and config.features.name == "f.h5" and config.output.suffix == ".skops"
    tuned = FinetuneConfig("images", "ft.pt", model="m", epochs="5", lr="3e-4", image_size="auto", flip=None)
    assert (tuned.epochs, tuned.lr, tuned.image_size, tuned.flip) == (5, 3e-4, "auto", "auto")


def test_a_device_is_named_as_its_caller_knows_it():
    with pytest.raises(SettingError) as caught:
        resolve_device("tpu")
    assert str(caught.value) == "ExtractConfig.device 'tpu' is not valid; use auto, cpu, cuda or cuda:N"
    assert caught.value.told_by_option() == "--device 'tpu' is not valid; use auto, cpu, cuda or cuda:N"
    for group in (FINETUNE, PREDICT):
        with pytest.raises(SettingError, match=rf"^{group.name}\.device 'cuda:x' is not valid"):
            resolve_device("cuda:x", group)
    with pytest.raises(SettingError) as caught:
        parse_devices("cuda:0,cuda:0", 2)
    assert caught.value.told_by_option() == "--devices 'cuda:0,cuda:0' names cuda:0 twice; give each GPU once"
