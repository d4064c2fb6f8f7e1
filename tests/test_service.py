"""Service reflection: which attributes become methods, names, async detection, argument checks.

No sockets and no event loop: build_service only looks at the object.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import sys

import pytest

from geerpc.service import Method, argument_error, build_service


class Calc:
    """Public methods of every kind, plus things that must never be exposed."""

    limit = 3  # a plain class attribute
    tags = ("a", "b")
    _hidden = staticmethod(lambda: "hidden")

    class Inner:  # a nested class is callable, but not a method
        pass

    def __init__(self) -> None:
        self.reads = 0
        self.instance_callable = lambda: "instance"  # not on the class: not a method

    def add(self, a, b):
        return a + b

    async def sub(self, a, b):
        return a - b

    async def slow(self, seconds):
        await asyncio.sleep(seconds)
        return seconds

    @staticmethod
    def static_twice(x):
        return 2 * x

    @staticmethod
    async def static_async(x):
        return x

    @classmethod
    def class_name(cls):
        return cls.__name__

    @classmethod
    async def class_async(cls):
        return cls.__name__

    @property
    def counted(self):
        self.reads += 1
        return self.reads

    @property
    def explodes(self):
        raise RuntimeError("a property ran during registration")

    def _private(self):
        return "private"

    def __secret(self):
        return "mangled"

    def __call__(self):
        return "dunder"

    def __len__(self):
        return 0


def test_public_methods_only():
    service = build_service(Calc())
    assert sorted(service.methods) == ["add", "class_async", "class_name", "slow", "static_async",
                                       "static_twice", "sub"]


def test_method_names_are_service_dot_method():
    service = build_service(Calc())
    assert service.name == "Calc"
    assert {m.name for m in service.methods.values()} == {f"Calc.{n}" for n in service.methods}


def test_private_mangled_and_dunder_names_are_not_methods():
    methods = build_service(Calc()).methods
    for name in ["_private", "_Calc__secret", "__secret", "__call__", "__len__", "__init__", "__class__",
                 "__getattribute__", "__reduce__", "_hidden"]:
        assert name not in methods


def test_properties_are_not_run_during_registration():
    calc = Calc()
    service = build_service(calc)  # `explodes` would raise if it ran
    assert calc.reads == 0
    assert "counted" not in service.methods and "explodes" not in service.methods


def test_non_callable_class_attributes_are_skipped():
    methods = build_service(Calc()).methods
    assert "limit" not in methods and "tags" not in methods


def test_nested_classes_are_skipped():
    assert "Inner" not in build_service(Calc()).methods


def test_callables_set_on_the_instance_are_not_methods():
    assert "instance_callable" not in build_service(Calc()).methods


def test_methods_are_bound_to_the_instance():
    calc = Calc()
    methods = build_service(calc).methods
    assert methods["add"].func(2, 3) == 5
    assert methods["add"].func.__self__ is calc


def test_staticmethod_and_classmethod_are_callable():
    methods = build_service(Calc()).methods
    assert methods["static_twice"].func(4) == 8
    assert methods["class_name"].func() == "Calc"


def test_service_keeps_the_instance():
    calc = Calc()
    assert build_service(calc).instance is calc


def test_explicit_name():
    service = build_service(Calc(), "Arithmetic")
    assert service.name == "Arithmetic"
    assert service.methods["add"].name == "Arithmetic.add"


@pytest.mark.parametrize("name", ["a.b", "_x", "__init__", "", "1x", "a b", "a-b", "Calc.", ".Calc", "a\n"])
def test_invalid_service_names_are_rejected(name):
    with pytest.raises(ValueError):
        build_service(Calc(), name)


@pytest.mark.parametrize("name", [1, b"Calc", ["Calc"]])
def test_non_str_service_names_are_rejected(name):
    with pytest.raises(ValueError):
        build_service(Calc(), name)


def test_class_name_starting_with_underscore_needs_an_explicit_name():
    class _Private:
        def run(self):
            return 1

    with pytest.raises(ValueError):
        build_service(_Private())
    assert build_service(_Private(), "Public").name == "Public"


def test_object_without_public_methods_is_rejected():
    class Empty:
        value = 1

        def _helper(self):
            pass

        @property
        def prop(self):
            raise RuntimeError("ran")

    with pytest.raises(ValueError):
        build_service(Empty())
    with pytest.raises(ValueError):
        build_service(object())


def test_getattr_hook_is_not_consulted():
    class Dynamic:
        def __getattr__(self, name):
            raise AssertionError(f"__getattr__({name!r}) ran during registration")

        def real(self):
            return 1

    assert list(build_service(Dynamic()).methods) == ["real"]


# --------------------------------------------------------------------------- builtin and library bases


class Settings(dict):
    def lookup(self, key):
        return self.get(key)


class Failure(Exception):
    def describe(self):
        return str(self)


class OwnCopy(dict):
    def copy(self):  # overriding a builtin's method makes it the user's own
        return dict(self)


class Ordered(collections.OrderedDict):  # a standard-library (not builtin) base
    def first(self):
        return next(iter(self))


class Base:
    def shared(self):
        return "base"


class Derived(Base, dict):
    def own(self):
        return "derived"


def test_dict_subclass_exposes_only_its_own_methods():
    assert list(build_service(Settings()).methods) == ["lookup"]


def test_exception_subclass_exposes_only_its_own_methods():
    assert list(build_service(Failure("x")).methods) == ["describe"]


def test_standard_library_base_methods_are_not_exposed():
    assert list(build_service(Ordered()).methods) == ["first"]


def test_user_override_of_a_builtin_method_is_exposed():
    assert list(build_service(OwnCopy()).methods) == ["copy"]


def test_methods_of_user_bases_are_exposed_beside_a_builtin_base():
    assert sorted(build_service(Derived()).methods) == ["own", "shared"]


@pytest.mark.parametrize("cls", [Calc, Settings, type, dict])
def test_a_class_is_refused_with_a_message_saying_what_to_pass(cls):
    with pytest.raises(ValueError, match=rf"register an instance, not the class {cls.__name__}: pass {cls.__name__}\(\)"):
        build_service(cls)


@pytest.mark.parametrize("module", [collections, functools, pytest])
def test_a_module_is_refused(module):
    with pytest.raises(ValueError, match=f"not the module {module.__name__}"):
        build_service(module)


@pytest.mark.parametrize("value", [{}, [], "text", 42, len, print, object(), ValueError("x"),
                                   collections.OrderedDict(), collections.Counter()],
                         ids=lambda v: type(v).__name__)
def test_builtin_and_standard_library_objects_are_refused(value):
    with pytest.raises(ValueError, match="is a builtin or standard-library type: register an instance of your own"):
        build_service(value)


def test_a_class_of_a_script_run_under_a_profiler_is_the_users_own(tmp_path):
    """``python -m cProfile server.py``: the script's classes are in module
    ``__main__``, while sys.modules["__main__"] is cProfile's own (standard-library)
    module. Registering them must work, so a server can be profiled as it runs."""
    import subprocess
    import sys

    script = tmp_path / "server.py"
    script.write_text(
        "import geerpc\n"
        "class Arith:\n"
        "    def add(self, a, b):\n"
        "        return a + b\n"
        "geerpc.Server().register(Arith())\n"
        "print('registered')\n")
    from conftest import ROOT, subprocess_env

    done = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(tmp_path / "profile"), str(script)],
                          capture_output=True, text=True, timeout=60, env=subprocess_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "registered"


# --------------------------------------------------------------------------- async detection


def test_async_detection():
    methods = build_service(Calc()).methods
    assert methods["sub"].is_async is True
    assert methods["slow"].is_async is True
    assert methods["static_async"].is_async is True
    assert methods["class_async"].is_async is True
    assert methods["add"].is_async is False
    assert methods["static_twice"].is_async is False
    assert methods["class_name"].is_async is False


def test_async_detection_of_callable_objects_and_partials():
    class AsyncCallable:
        async def __call__(self, x):
            return x

    class SyncCallable:
        def __call__(self, x):
            return x

    async def coro(a, b):
        return a + b

    class Holder:
        run_async = AsyncCallable()
        run_sync = SyncCallable()
        partial_async = staticmethod(functools.partial(coro, 1))

    methods = build_service(Holder()).methods
    assert methods["run_async"].is_async is True
    assert methods["run_sync"].is_async is False
    assert methods["partial_async"].is_async is True


def test_coroutine_without_await_is_inline_and_others_are_not():
    methods = build_service(Calc()).methods
    assert methods["sub"].inline is True
    assert methods["slow"].inline is False
    assert methods["add"].inline is False  # plain def: never inline, it may block


# --------------------------------------------------------------------------- argument_error


class Shapes:
    def two(self, a, b):
        return a + b

    def defaults(self, a, b=2, *, c=3):
        return a + b + c

    def positional_only(self, a, /, b):
        return a + b

    def keyword_only(self, *, key):
        return key

    def anything(self, *args, **kwargs):
        return args, kwargs


@pytest.fixture
def shapes() -> dict[str, Method]:
    return build_service(Shapes()).methods


def test_argument_error_none_when_arguments_fit(shapes):
    assert argument_error(shapes["two"], [1, 2], {}) is None
    assert argument_error(shapes["two"], [1], {"b": 2}) is None
    assert argument_error(shapes["defaults"], [1], {"c": 4}) is None
    assert argument_error(shapes["keyword_only"], [], {"key": 1}) is None
    assert argument_error(shapes["anything"], [1, 2, 3], {"x": 1}) is None


def test_argument_error_missing_argument(shapes):
    message = argument_error(shapes["two"], [1], {})
    assert message is not None
    assert message.startswith("Shapes.two(a, b): ")
    assert "missing a required argument: 'b'" in message


def test_argument_error_too_many_arguments(shapes):
    message = argument_error(shapes["two"], [1, 2, 3], {})
    assert message is not None and "Shapes.two" in message and "too many positional arguments" in message


def test_argument_error_unexpected_keyword(shapes):
    message = argument_error(shapes["defaults"], [1], {"d": 4})
    assert message is not None and "unexpected keyword argument 'd'" in message


def test_argument_error_duplicate_argument(shapes):
    message = argument_error(shapes["two"], [1, 2], {"a": 1})
    assert message is not None and "multiple values for argument 'a'" in message


def test_argument_error_positional_only_passed_by_keyword(shapes):
    assert argument_error(shapes["positional_only"], [], {"a": 1, "b": 2}) is not None


def test_argument_error_keyword_only_passed_positionally(shapes):
    assert argument_error(shapes["keyword_only"], [1], {}) is not None


def test_argument_error_self_is_not_an_argument(shapes):
    assert argument_error(shapes["two"], [1, 2], {"self": 0}) is not None


@pytest.mark.parametrize("key", [b"a", 1, None])
def test_argument_error_non_str_keyword_names(shapes, key):
    message = argument_error(shapes["anything"], [], {key: 1})
    assert message == "Shapes.anything: keyword argument names must be strings"


def test_argument_error_none_when_the_signature_is_unknown():
    method = Method("Builtins.min", min, False)  # min has no introspectable signature
    assert method.signature is None
    assert argument_error(method, [], {}) is None


def test_signature_excludes_self_and_is_cached(shapes):
    method = shapes["defaults"]
    assert str(method.signature) == "(a, b=2, *, c=3)"
    assert method.signature is method.signature


def test_argument_error_names_an_unexpected_keyword_before_the_argument_it_displaced(shapes):
    # add(1, c=2): the caller misspelt b; "missing 'b'" alone would hide that
    assert argument_error(shapes["two"], [1], {"c": 2}) == "Shapes.two(a, b): got an unexpected keyword argument 'c'"
    assert argument_error(shapes["two"], [], {"x": 1, "y": 2}) == (
        "Shapes.two(a, b): got unexpected keyword arguments 'x', 'y'")


def test_argument_error_leaves_extra_keywords_to_a_method_that_takes_them(shapes):
    assert argument_error(shapes["anything"], [], {"c": 2}) is None


class Annotated:  # this module postpones annotations: they are the strings "int"
    def add(self, a: int, b: int) -> int:
        return a + b


def test_argument_error_shows_postponed_annotations_unquoted():
    method = build_service(Annotated()).methods["add"]
    assert argument_error(method, [1], {}) == (
        "Annotated.add(a: int, b: int) -> int: missing a required argument: 'b'")


def test_latencies_keep_the_last_window_oldest_first():
    from geerpc.service import LATENCY_WINDOW

    method = Method("Builtins.min", min, False)
    assert method.latencies == []
    for n in range(5):
        method.record(n / 8)
    assert method.latencies == [0.0, 0.125, 0.25, 0.375, 0.5]
    for n in range(5, LATENCY_WINDOW + 3):
        method.record(n / 8)
    assert method.latencies == [n / 8 for n in range(3, LATENCY_WINDOW + 3)]
    assert method.calls == LATENCY_WINDOW + 3


def test_a_methods_memory_does_not_grow_as_its_latency_window_fills():
    """The soak's slow methods filled their windows over tens of minutes, one float
    object a call: a slope in a long-running server's memory that looked like a leak.
    Measured with tracemalloc, for what this file and service.py allocate (other
    threads' allocations do not count)."""
    import tracemalloc

    from geerpc.service import LATENCY_WINDOW

    method = Method("Builtins.min", min, False)
    method.record(0.5)  # the ring, the codes dict and the like exist now
    method.record(0.25, 1)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for n in range(LATENCY_WINDOW):
            method.record(n * 1e-6, n & 1)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ours = (__file__, sys.modules[Method.__module__].__file__)
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename")
                if stat.traceback[0].filename in ours)
    assert grown < 1024


def test_record_follows_reply_sizes_as_a_decaying_maximum() -> None:
    method = Method("Builtins.min", min, False)
    assert method.reply_size == -1  # no reply yet: a starting call reserves a share of the budget
    method.record(0.001, 0, 800)
    assert method.reply_size == 800
    method.record(0.001, 0, 1200)  # larger: taken at once
    assert method.reply_size == 1200
    method.record(0.001, 0, 400)  # smaller: an eighth of the way down
    assert method.reply_size == 1200 - (800 >> 3)
    method.record(0.001, 4)  # no reply sent (a cancel, a timeout answered elsewhere): unchanged
    assert method.reply_size == 1100
    assert method.calls == 4 and method.errors == 1
