"""The one registry pattern (grace_bench.registry) and the registries built on it: methods, suites, attacks."""

from __future__ import annotations

import sys

import pytest

from grace_bench.errors import UserError
from grace_bench.registry import Registry


def test_unknown_name_is_one_line_with_known_names_and_nearest_suggestion():
    reg: Registry[int] = Registry("widget", {"alpha": "math:pi"})
    reg.register("beta", 2)
    with pytest.raises(UserError) as info:
        reg.get("alpah")
    message = str(info.value)
    assert "\n" not in message
    assert "unknown widget 'alpah'" in message and "did you mean 'alpha'?" in message
    assert "choose one of: alpha, beta" in message


def test_lazy_builtins_are_listed_without_import_and_loaded_on_get():
    reg: Registry[object] = Registry("thing", {"lazy": "tests._registry_target_never_imported:VALUE"})
    assert reg.names() == ["lazy"] and "lazy" in reg
    assert "tests._registry_target_never_imported" not in sys.modules
    assert Registry("thing", {"pi": "math:pi"}).get("pi") == pytest.approx(3.14159, abs=1e-5)


def test_a_missing_builtin_module_is_an_error_not_silently_skipped():
    reg: Registry[object] = Registry("thing", {"gone": "grace_bench.no_such_module:Thing"})
    with pytest.raises(ModuleNotFoundError):
        reg.get("gone")
    assert "gone" in reg.names()  # still listed: nothing disappears quietly


def test_register_as_call_and_as_decorator():
    reg: Registry[type] = Registry("kind")

    @reg.register("decorated")
    class Decorated:
        pass

    assert reg.register("called", int) is int
    assert reg.get("decorated") is Decorated and reg.get("called") is int
    with pytest.raises(ValueError):
        reg.register("", int)
    with pytest.raises(ValueError):
        reg.register_lazy("bad", "no-colon")


def test_every_builtin_method_loads_by_name_including_grace():
    from grace_bench.finetune.methods import METHODS, get_method

    assert {"ft", "flyp", "tecoa", "fare", "pmg-aft", "grace"} <= set(METHODS.names())
    for name in METHODS.names():
        assert get_method(name).name == name
    with pytest.raises(UserError, match="did you mean 'grace'"):
        get_method("grcae")


def test_methods_module_has_no_silent_skip():
    import grace_bench.finetune.methods as methods

    assert not hasattr(methods, "_OPTIONAL_MODULES")


def test_suites_own_their_eval_defaults_and_default_models():
    from grace_bench.data.suites import get_suite, suite_for_arch

    micro, imagenet = get_suite("micro"), get_suite("imagenet")
    assert micro.eval_defaults() == {"attack": "apgd-ce[restarts=1]", "eps": "4/255", "n_adv": 250}
    assert imagenet.n_adv == 5000 and imagenet.default_checkpoint == "ViT-B-32:openai"
    assert micro.default_checkpoint == "micro" and micro.loader_workers == 0
    assert suite_for_arch("micro-clip") == "micro" and suite_for_arch("tiny-clip") == "micro"
    assert suite_for_arch("ViT-B-32") == "imagenet"
    with pytest.raises(UserError, match="did you mean 'micro'"):
        get_suite("mirco")


def test_eval_plan_takes_the_suites_defaults(tmp_path, monkeypatch):
    """A suite registered with its own defaults gets them in ``plan_eval`` (no per-name branch elsewhere)."""
    from dataclasses import replace

    from grace_bench.data.suites import SUITES, get_suite, register_suite
    from grace_bench.eval.config import EvalConfig
    from grace_bench.eval.plan import plan_eval

    custom = replace(get_suite("micro"), name="_test-own-defaults", attack="pgd", eps="2/255", n_adv=7)
    register_suite("_test-own-defaults", lambda: custom)
    try:
        plan = plan_eval(EvalConfig(checkpoint="micro", suite="_test-own-defaults", out=tmp_path))
    finally:
        SUITES.unregister("_test-own-defaults")
    assert (plan.attack, plan.eps, plan.n_adv) == ("pgd[steps=10,step=1/255]", "2/255", 7)


def test_eval_without_a_checkpoint_takes_the_suites_default_model(tmp_path):
    from grace_bench.eval.config import EvalConfig
    from grace_bench.eval.plan import plan_eval

    assert plan_eval(EvalConfig(out=tmp_path)).checkpoint == "micro"
    imagenet = plan_eval(EvalConfig(suite="imagenet", data_root=tmp_path, attack="none", out=tmp_path))
    assert imagenet.checkpoint == "ViT-B-32:openai" and imagenet.suite.name == "imagenet"
    assert plan_eval(EvalConfig(checkpoint="micro", suite="imagenet", data_root=tmp_path, attack="none",
                                out=tmp_path)).checkpoint == "micro"
