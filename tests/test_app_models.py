"""The Kernel page's model choice: the packaged models first, then a hub id or local folder."""

from __future__ import annotations

from test_app import goto, load_demo, new_app


def test_kernel_page_offers_the_packaged_models_then_a_hub_id() -> None:
    at = load_demo(new_app())
    goto(at, "2_Kernel")
    at.radio(key="p_kernel").set_value("utility").run()
    box = at.selectbox(key="p_model_choice")
    assert box.options == ["Gemma 3 270M (packaged, default)", "SmolLM2 135M Instruct (packaged)",
                           "hub id or local folder"]
    assert box.value == "gemma-3-270m" and at.session_state["p_model"] == "gemma-3-270m"
    box.set_value("smollm2-135m-instruct").run()
    assert not at.exception
    assert at.session_state["p_model"] == "smollm2-135m-instruct"
    at.selectbox(key="p_model_choice").set_value("hub id or local folder").run()
    assert any("Gemma 3 270M (packaged, default) is used" in i.value for i in at.info)
    at.text_input(key="p_model_custom").set_value(" ./my-model ").run()
    assert at.session_state["p_model"] == "./my-model"
    goto(at, "3_Select")  # the choice survives a page switch
    goto(at, "2_Kernel")
    assert at.selectbox(key="p_model_choice").value == "hub id or local folder"
    assert at.session_state["p_model"] == "./my-model"
