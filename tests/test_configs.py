"""The release architectures of demucs.configs have their documented parameter counts."""

import pytest
import torch

from demucs import configs
from demucs.htdemucs import HTDemucs


@pytest.mark.parametrize("name", sorted(configs.RELEASE_CONFIGS))
def test_release_parameter_count(name):
    with torch.device("meta"):  # no memory, no initialisation cost
        model = HTDemucs(**configs.RELEASE_CONFIGS[name])
    count = sum(p.numel() for p in model.parameters())
    assert count == configs.RELEASE_PARAMETERS[name]


def test_htdemucs_is_the_release_architecture():
    assert configs.RELEASE_PARAMETERS["htdemucs"] == 41_984_456
    assert configs.HTDEMUCS["dconv_mode"] == 3 and configs.HTDEMUCS["bottom_channels"] == 512
    assert configs.HTDEMUCS["t_layers"] == 5 and configs.HTDEMUCS["channels"] == 48


def test_configs_module_is_torch_free():
    import subprocess
    import sys

    code = "import sys, demucs.configs; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
