"""The unified model: its config, parts, assembly, packed attention, save/load and the Janus
bridge. Decoding is utamoe.infer.

    from utamoe.model.unified import UnifiedModel        # assembly and the mixed-task forward
    from utamoe.model.io import load_model_dir            # self-describing model directories
    from utamoe.model.janus import load_janus             # Janus / Janus-Pro as a UnifiedModel
"""
