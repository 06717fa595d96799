"""Home Assistant's world reaches the engine as the server does: the installed library."""

from pathlib import Path

from tests.engine.test_packaging import ENGINE, ROOT, clean_interpreter


def test_home_assistant_world_loads_the_same_engine() -> None:
    """Importing the integration loads the engine once, by its one name, from the same files."""
    seen = clean_interpreter(
        f"import sys, json; sys.path.insert(0, {str(ROOT)!r})\n"
        "import custom_components.giot.coordinator, giot_engine\n"
        "print(json.dumps({'file': giot_engine.__file__,"
        " 'engines': sorted(n for n in sys.modules if n.endswith('.tokenizer'))}))"
    )
    assert Path(str(seen["file"])).resolve() == (ENGINE / "__init__.py").resolve()
    assert seen["engines"] == ["giot_engine.tokenizer"]
