"""The Flower apps reach the engine the way Home Assistant does: the installed library."""

from pathlib import Path

from tests.engine.test_packaging import ENGINE, ROOT, clean_interpreter


def test_server_world_loads_the_same_engine() -> None:
    """The Flower apps import the engine by the same name, from the same files."""
    seen = clean_interpreter(
        f"import sys, json; sys.path.insert(0, {str(ROOT)!r})\n"
        "import fl_server.client_app, fl_server.server_app, giot_engine\n"
        "print(json.dumps({'file': giot_engine.__file__,"
        " 'engines': sorted(n for n in sys.modules if n.endswith('.tokenizer')),"
        " 'ha': 'homeassistant' in sys.modules}))"
    )
    assert Path(str(seen["file"])).resolve() == (ENGINE / "__init__.py").resolve()
    assert seen["engines"] == ["giot_engine.tokenizer"]
    assert seen["ha"] is False
