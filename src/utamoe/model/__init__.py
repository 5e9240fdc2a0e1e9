"""The unified model: its config, parts, assembly, generation, save/load and the Janus bridge.

    from utamoe.model.unified import UnifiedModel        # assembly and the mixed-task forward
    from utamoe.model.generation import generate_text    # sampling with a KV cache and CFG
    from utamoe.model.io import load_model_dir            # self-describing model directories
    from utamoe.model.janus import load_janus             # Janus / Janus-Pro as a UnifiedModel
"""
