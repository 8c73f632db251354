"""Applications built on the Separator (the Gradio demo lands here: ``build_demo(separator)``)."""
