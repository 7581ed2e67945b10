"""The one way to set a seam (detrkit.modeling.seams): blocks restore exactly what each module had, so they nest and
an override already in place survives the attention pictures; memory savers set the seams of the module types that
declare them and remove only their own."""
import pytest
import torch

from helpers import SMALL

from detrkit.deploy.visualize import record_sampling
from detrkit.modeling import DeformableDetrConfig, DeformableDetrForObjectDetection
from detrkit.modeling.deformable_attention import MultiScaleDeformableAttention
from detrkit.modeling.detr_transformer import TransformerLayer
from detrkit.modeling.seams import SEAMS, clear_seam, override_seam, seam_modules, set_seam
from detrkit.training.memory_savers import apply_memory_savers, remove_memory_savers


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DeformableDetrForObjectDetection(DeformableDetrConfig(**SMALL, use_pretrained_backbone=False)).eval()


def settings(model, seam):
    """Each module's own setting of `seam` (absent: its class' default)."""
    return {name: vars(module).get(seam, "unset") for name, module in seam_modules(model, seam).items()}


def test_seams_are_found_by_type(model):
    attentions = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    layers = [m for m in model.modules() if isinstance(m, TransformerLayer)]
    assert len(attentions) == SMALL["encoder_layers"] + SMALL["decoder_layers"]  # decoder: the cross-attentions
    assert list(seam_modules(model, "sampling_function").values()) == attentions
    assert list(seam_modules(model, "feed_forward_function").values()) == layers
    assert set(SEAMS) == {"sampling_function", "query_projection_function", "feed_forward_function"}
    with pytest.raises(ValueError, match="unknown seam"):
        seam_modules(model, "sampling")


def test_nested_overrides_restore_exactly_what_was_there(model):
    def outer(*args):
        return None

    def inner(*args):
        return None

    untouched = settings(model, "sampling_function")
    assert set(untouched.values()) == {"unset"}
    with override_seam(model, "sampling_function", outer) as modules:
        assert modules and all(m.sampling_function is outer for m in modules.values())
        with override_seam(model, "sampling_function", inner):
            assert all(m.sampling_function is inner for m in modules.values())
        assert all(m.sampling_function is outer for m in modules.values())
    assert settings(model, "sampling_function") == untouched
    with pytest.raises(RuntimeError):  # restored on errors too
        with override_seam(model, "sampling_function", outer):
            raise RuntimeError
    assert settings(model, "sampling_function") == untouched


def test_function_of_sees_what_each_module_called_before(model):
    def first(*args):
        return None

    seen = {}

    def wrap(name, module, previous):
        seen[name] = previous
        return lambda *args: previous(*args)

    with override_seam(model, "sampling_function", function_of=wrap):
        assert set(seen.values()) == {None}  # the modules' own code
    with override_seam(model, "sampling_function", first), override_seam(model, "sampling_function",
                                                                         function_of=wrap):
        assert set(seen.values()) == {first}
    with pytest.raises(ValueError):
        override_seam(model, "sampling_function").__enter__()


def test_an_override_in_place_survives_the_attention_pictures_and_serves_them(model, monkeypatch):
    monkeypatch.setenv("DETRKIT_DISABLE_KERNELS", "1")  # no kernel build for this
    calls = []

    def counting(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        calls.append(1)
        return module.default_sampling(value, spatial_shapes, level_start_index, sampling_locations,
                                       attention_weights)

    module = next(iter(seam_modules(model, "sampling_function").values()))
    pixel_values = torch.randn(1, 3, 64, 96)
    with override_seam(model, "sampling_function", counting):
        with torch.no_grad(), record_sampling(model) as records:
            model(pixel_values)
        assert records and len(calls) == len(seam_modules(model, "sampling_function"))
        assert all(m.sampling_function is counting for m in seam_modules(model, "sampling_function").values())
    assert set(settings(model, "sampling_function").values()) == {"unset"}


def test_memory_savers_set_and_remove_only_their_own(model):
    def foreign(*args):
        return None

    first = next(iter(seam_modules(model, "feed_forward_function").values()))
    with override_seam(model, "sampling_function", foreign):
        apply_memory_savers(model)
        try:
            assert all("feed_forward_function" in vars(m) for m in seam_modules(model, "feed_forward_function").values())
            assert all("query_projection_function" in vars(m)
                       for m in seam_modules(model, "query_projection_function").values())
            first.feed_forward_function = foreign  # someone else's setting, after the savers'
        finally:
            remove_memory_savers(model)
        assert all(m.sampling_function is foreign for m in seam_modules(model, "sampling_function").values())
    assert first.feed_forward_function is foreign
    assert all("query_projection_function" not in vars(m)
               for m in seam_modules(model, "query_projection_function").values())
    clear_seam(model, "feed_forward_function")
    assert set(settings(model, "feed_forward_function").values()) == {"unset"}
    set_seam(model, "feed_forward_function", None)  # None: the modules' own code
    assert first.feed_forward_function is None
    clear_seam(model, "feed_forward_function")
