"""The Gradio app: settings, its context (engine, store, jobs), access, line-up, Space build; ui/ holds the tabs."""
